"""`bottle-mcp serve` spawned over stdio and driven by the SDK's client, in both protocol eras."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from bottle_mcp import labels as L

pytestmark = pytest.mark.anyio


def _params(manifest: Path, cwd: Path) -> StdioServerParameters:
    env = {k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(manifest)],
        env=env,
        cwd=str(cwd),
    )


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def _error_text(result: CallToolResult) -> str:
    assert result.is_error
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_whole_lifecycle_over_stdio(
    mode: str, example_manifest: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    (tmp_path / "input.txt").write_text("from the host\n")
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    with anyio.fail_after(60):
        async with Client(_params(example_manifest, tmp_path), mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {
                "prepare_bottle",
                "launch_bottle",
                "exec",
                "cp_in",
                "stop_bottle",
                "list_active",
                "cleanup",
            } <= names

            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "worker"}))
            assert plan["capabilities_dropped"] == ["ALL"] and plan["image_present"]
            launched = _ok(
                await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}, progress_callback=on_progress)
            )
            bid = launched["bottle_id"]
            if mode == "legacy":
                assert seen, "launch_bottle sent no progress notifications"

            res = _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "echo hi; exit 4"}))
            assert (res["exit_code"], res["stdout"]) == (4, "hi\n")

            copied = _ok(
                await client.call_tool(
                    "cp_in", {"bottle_id": bid, "host_path": "input.txt", "bottle_path": "/workspace/input.txt"}
                )
            )
            assert copied["files"] == 1
            res = _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "cat /workspace/input.txt"}))
            assert res["stdout"] == "from the host\n"

            err = _error_text(
                await client.call_tool("cp_in", {"bottle_id": bid, "host_path": "/etc", "bottle_path": "/workspace/e"})
            )
            assert "outside the allowed roots" in err
            err = _error_text(await client.call_tool("exec", {"bottle_id": "b-missing", "command": "true"}))
            assert "no bottle 'b-missing'" in err
            err = _error_text(await client.call_tool("launch_bottle", {"plan_id": "p-missing"}))
            assert "prepare_bottle" in err
            err = _error_text(await client.call_tool("exec", {"bottle_id": bid, "command": "true", "timeout_s": -1}))
            assert "timeout_s" in err

            listed = _ok(await client.call_tool("list_active", {}))
            assert any(b["bottle_id"] == bid and b["owner"] == "this-server" for b in listed["bottles"])
            stopped = _ok(await client.call_tool("stop_bottle", {"bottle_id": bid}))
            assert stopped["removed"]
            # A second bottle stays up until the client goes away: shutdown must remove it.
            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "worker"}))
            left = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]

    flt = {"label": [f"{L.BOTTLE}={left}"]}
    assert docker_client.api.containers(all=True, filters=flt) == []
    assert not (docker_client.api.volumes(filters=flt)["Volumes"] or [])


def test_sigterm_removes_bottles_quickly(
    example_manifest: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """The SDK client's shutdown ends with SIGTERM; the server must clean up within its ~2 s budget."""

    # Drive a server we own directly so that we can send the signal ourselves.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bottle_mcp", "serve", "--manifest", str(example_manifest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        import json

        def rpc(msg: dict[str, Any]) -> dict[str, Any]:
            assert proc.stdin and proc.stdout
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            proc.stdin.flush()
            while True:
                line = json.loads(proc.stdout.readline())
                if line.get("id") == msg.get("id"):
                    return line  # type: ignore[no-any-return]

        init = rpc(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
        )
        assert "result" in init
        assert proc.stdin
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        proc.stdin.flush()
        ids = []
        for n in range(3):
            plan = rpc(
                {
                    "jsonrpc": "2.0",
                    "id": 10 + n,
                    "method": "tools/call",
                    "params": {"name": "prepare_bottle", "arguments": {"agent": "worker"}},
                }
            )["result"]["structuredContent"]
            launched = rpc(
                {
                    "jsonrpc": "2.0",
                    "id": 20 + n,
                    "method": "tools/call",
                    "params": {"name": "launch_bottle", "arguments": {"plan_id": plan["plan_id"]}},
                }
            )["result"]["structuredContent"]
            ids.append(launched["bottle_id"])
        # What hosts do: SIGTERM, then SIGKILL when the process is still there 2 s later.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    for bid in ids:
        flt = {"label": [f"{L.BOTTLE}={bid}"]}
        assert docker_client.api.containers(all=True, filters=flt) == [], "a bottle outlived SIGTERM"
        assert not (docker_client.api.volumes(filters=flt)["Volumes"] or [])
