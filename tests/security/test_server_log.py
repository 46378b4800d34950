"""What a bottle says never reaches the server's log raw: redacted, escaped and clipped.

The real `bottle-mcp serve` runs over stdio with its stderr kept in a file. Its
bottle's supervisor is a hostile one (leaky_supervisor.py, put in place by a
`sitecustomize` hook on the server's own Python): it writes the forwarded
credential it was sent, wrapped in terminal escape sequences, and a long tail,
into its stderr and quits. The server logs that tail when the channel ends.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from .conftest import SECRET_NAME, SECRET_VALUE

pytestmark = pytest.mark.anyio

LEAKY = Path(__file__).parent / "leaky_supervisor.py"
HOOK = """
import os
if os.environ.get("BOTTLE_TEST_SUPERVISOR"):
    from bottle_mcp.backends.docker import channel
    _source = open(os.environ["BOTTLE_TEST_SUPERVISOR"]).read()
    channel.supervisor_source = lambda: _source
"""


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_a_bottles_words_reach_the_server_log_redacted_escaped_and_clipped(
    tmp_path: Path, runtime: str, worker_image: str
) -> None:
    del worker_image
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(f"""
[host]
keep_for = "0"  # removed when the server goes, not kept
approve = "never"

[bottles.plain]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"
# The real value in the bottle (not a stand-in): the redaction of what the bottle prints is tested.
real_credentials = ["{SECRET_NAME}"]

[agents.leaky]
bottle = "plain"
command = ["true"]
credentials = ["{SECRET_NAME}"]
""")
    log = tmp_path / "server.log"
    env = {k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ}
    env |= {SECRET_NAME: SECRET_VALUE, "PYTHONPATH": str(tmp_path / "hook"), "BOTTLE_TEST_SUPERVISOR": str(LEAKY)}
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", 'exec "$0" -m bottle_mcp -v serve --manifest "$1" 2>"$2"', sys.executable, str(manifest), str(log)],
        env=env,
        cwd=str(tmp_path),
    )
    with anyio.fail_after(120):
        async with Client(params, mode="legacy") as client:
            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "leaky"}))
            bottle = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))
            res = await client.call_tool("exec", {"bottle_id": bottle["bottle_id"], "command": "echo hi"})
            text = " ".join(c.text for c in res.content if isinstance(c, TextContent))
            assert SECRET_VALUE not in text
            _ok(await client.call_tool("stop_bottle", {"bottle_id": bottle["bottle_id"]}))
    written = log.read_text(errors="replace")
    assert "exec channel of" in written, written[-2000:]
    assert SECRET_VALUE not in written, written[-2000:]
    assert "[redacted" in written and SECRET_NAME in written, written[-2000:]
    assert "\x1b" not in written and "\x07" not in written and "\r" not in written
    assert "\\x1b" in written  # shown, not obeyed
    assert max(len(line) for line in written.splitlines()) <= 2100
