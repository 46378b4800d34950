"""Agent hosts log whatever a stdio server writes on stderr as an error: a clean session writes nothing.

Info and debug appear only with --verbose (on stderr) or in --log-file; warnings and errors
always reach stderr. Runs the real `bottle-mcp serve` over stdio on the fake backend.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

MANIFEST = """\
[host]
approve = "never"

[bottles.offline]
image = "bottle-mcp/worker:latest"

[agents.worker]
bottle = "offline"
command = ["true"]
"""


async def _session(manifest: Path, tmp_path: Path, *extra: str) -> str:
    """Prepare, launch, exec (with an error), stop; return what the server wrote on stderr."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", *extra, "serve", "--manifest", str(manifest)],
        env={
            "BOTTLE_MCP_BACKEND": "fake",
            "BOTTLE_MCP_APPROVALS_LOG": str(tmp_path / "approvals.jsonl"),
            "PATH": os.environ["PATH"],
        },
        cwd=str(tmp_path),
    )
    with tempfile.TemporaryFile("w+") as errlog:
        with anyio.fail_after(60):
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                plan = await session.call_tool("prepare_bottle", {"agent": "worker"})
                assert plan.structured_content is not None
                launched = await session.call_tool("launch_bottle", {"plan_id": plan.structured_content["plan_id"]})
                assert launched.structured_content is not None
                bid = launched.structured_content["bottle_id"]
                assert not (await session.call_tool("exec", {"bottle_id": bid, "command": "echo hi"})).is_error
                assert (await session.call_tool("exec", {"bottle_id": bid, "command": "x", "timeout_s": -1})).is_error
                assert (await session.call_tool("stop_bottle", {"bottle_id": "b-nothere"})).is_error
                assert not (await session.call_tool("stop_bottle", {"bottle_id": bid})).is_error
        errlog.seek(0)
        return errlog.read()


async def test_a_clean_session_writes_nothing_on_stderr(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    assert await _session(write_manifest(MANIFEST), tmp_path) == ""


async def test_verbose_and_a_log_file_show_what_the_server_did(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    manifest = write_manifest(MANIFEST)
    log = tmp_path / "server.log"
    assert await _session(manifest, tmp_path, "--log-file", str(log)) == ""
    text = log.read_text()
    assert "INFO bottle_mcp: serving manifest" in text and "DEBUG" not in text
    stderr = await _session(manifest, tmp_path, "--verbose")
    assert "INFO bottle_mcp: serving manifest" in stderr
