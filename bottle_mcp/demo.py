"""`bottle-mcp demo`: start the server over stdio and drive one bottle with a real MCP client."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

PASSTHROUGH_ENV = (
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "BOTTLE_MCP_DOCKER_CONTEXT",
    "BOTTLE_MCP_BACKEND",
)


class DemoFailed(Exception):
    """A tool call in the demo came back as an error."""


def _say(text: str) -> None:
    print(text, flush=True)


def _show(result: CallToolResult, keys: list[str] | None = None) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
        raise DemoFailed(text)
    data: dict[str, Any] = result.structured_content or {}
    shown = {k: data[k] for k in keys if k in data} if keys else data
    _say(textwrap.indent(json.dumps(shown, indent=2), "    "))
    return data


def server_params(manifest: Path, cwd: Path, backend: str | None = None) -> StdioServerParameters:
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    if backend:
        env["BOTTLE_MCP_BACKEND"] = backend
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(manifest), "--host-root", str(cwd), "--on-exit", "remove"],
        env=env,
        cwd=str(cwd),
    )


async def run_demo(manifest: Path, backend: str | None = None) -> int:
    failures: list[str] = []
    try:
        await _demo(manifest, backend)
    except* DemoFailed as group:
        failures = [str(e) for e in group.exceptions]
    for text in failures:
        _say(f"\nDEMO FAILED: {text}")
    return 1 if failures else 0


async def _demo(manifest: Path, backend: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bottle-mcp-demo-") as tmp:
        work = Path(tmp)
        (work / "notes.txt").write_text("hello from the host\n")
        (work / "data").mkdir()
        (work / "data" / "numbers.csv").write_text("a,b\n1,2\n3,4\n")
        _say(f"== starting `bottle-mcp serve --manifest {manifest}` over stdio")
        t0 = time.monotonic()
        async with Client(server_params(manifest, work, backend), mode="legacy") as client:
            tools = await client.list_tools()
            _say(f"   connected in {time.monotonic() - t0:.2f} s; tools: {', '.join(t.name for t in tools.tools)}")

            _say("\n== prepare_bottle(agent='worker'): the plan a reviewer reads before anything starts")
            plan = _show(
                await client.call_tool("prepare_bottle", {"agent": "worker"}),
                [
                    "plan_id",
                    "image",
                    "image_present",
                    "runtime",
                    "user",
                    "capabilities_dropped",
                    "read_only_root",
                    "network",
                    "resources",
                    "mounts",
                    "warnings",
                ],
            )

            _say("\n== launch_bottle(plan_id)")

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                _say(f"    .. {message}")

            launched = _show(
                await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}, progress_callback=on_progress),
                ["bottle_id", "status", "runtime", "duration_ms", "provisioned"],
            )
            bid = launched["bottle_id"]
            try:
                for command in (
                    "id && uname -sr && pwd",
                    "grep CapEff /proc/self/status; "
                    "python3 -c 'import ctypes; print(\"no_new_privs:\", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'",
                    'touch /etc/evil; awk \'$2 == "/" {print "root file system:", substr($4, 1, 2)}\' /proc/mounts',
                    "ip -o addr 2>/dev/null || cat /proc/net/dev | tail -n +3 | cut -d: -f1",
                ):
                    _say(f"\n== exec({command!r})")
                    _show(
                        await client.call_tool("exec", {"bottle_id": bid, "command": command, "timeout_s": 20}),
                        ["exit_code", "stdout", "stderr", "duration_ms"],
                    )

                _say("\n== cp_in(host 'data' folder -> /workspace/data), then read it back")
                _show(
                    await client.call_tool(
                        "cp_in", {"bottle_id": bid, "host_path": "data", "bottle_path": "/workspace/data"}
                    ),
                    ["files", "directories", "bytes", "bottle_path"],
                )
                _show(
                    await client.call_tool("exec", {"bottle_id": bid, "command": "cat /workspace/data/numbers.csv"}),
                    ["exit_code", "stdout"],
                )

                _say("\n== run_agent(task): the manifest's agent starts in the background; wait_job follows it")
                job = _show(
                    await client.call_tool(
                        "run_agent", {"bottle_id": bid, "prompt": "Summarise what is in the data folder."}
                    ),
                    ["job_id", "kind", "command", "status"],
                )
                waited = await client.call_tool("wait_job", {"job_id": job["job_id"], "timeout_s": 30})
                done = _show(waited, ["done"])
                _say(textwrap.indent(done["stdout"]["text"], "    | "))

                _say("\n== cp_in('/etc/passwd'): outside the allowed root, so refused")
                refused = await client.call_tool(
                    "cp_in", {"bottle_id": bid, "host_path": "/etc/passwd", "bottle_path": "/workspace/x"}
                )
                _say(textwrap.indent(" ".join(c.text for c in refused.content if isinstance(c, TextContent)), "    "))

                _say("\n== exec('sleep 30', timeout_s=1): the timeout kills the process in the bottle")
                _show(
                    await client.call_tool("exec", {"bottle_id": bid, "command": "sleep 30", "timeout_s": 1}),
                    ["exit_code", "timed_out", "duration_ms", "notes"],
                )

                _say("\n== list_active()")
                _show(await client.call_tool("list_active", {}))
            finally:
                _say(f"\n== stop_bottle({bid!r})")
                _show(await client.call_tool("stop_bottle", {"bottle_id": bid}))
        _say("\n== done: the server exited and removed everything it started")
