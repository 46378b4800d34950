"""Engine faults on a second engine of our own: a stopped engine gives a clear, quick error, not a hang."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from .conftest import engine2

pytestmark = pytest.mark.anyio


def _text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, _text(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_a_stopped_engine_gives_a_clear_error_and_tools_work_again_once_it_is_back(
    second_engine: str, example_manifest: Path, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(example_manifest)],
        env={"DOCKER_HOST": second_engine},
        cwd=str(tmp_path),
    )
    async with Client(params, mode="legacy") as client:
        with anyio.fail_after(120):
            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "worker"}))
            bid = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]
            assert _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "echo up"}))["stdout"] == "up\n"

        await anyio.to_thread.run_sync(engine2, "stop")
        try:
            with anyio.fail_after(30):  # each answer comes at once; the bound only keeps a hang from stalling CI
                for name, args in [
                    ("list_active", {}),
                    ("prepare_bottle", {"agent": "worker"}),
                    ("exec", {"bottle_id": bid, "command": "true"}),
                    ("cleanup", {"dry_run": True}),
                ]:
                    result = await client.call_tool(name, args)
                    assert result.is_error, (name, result)
                    assert "unreachable" in _text(result) or "gone" in _text(result), (name, _text(result))
                    if name != "exec":
                        assert f"engine at {second_engine} (from DOCKER_HOST) is unreachable" in _text(result)
        finally:
            await anyio.to_thread.run_sync(engine2, "start")

        with anyio.fail_after(120):
            assert "bottles" in _ok(await client.call_tool("list_active", {}))
            # The old bottle died with its engine: it is reported gone, and a new one works.
            gone = await client.call_tool("exec", {"bottle_id": bid, "command": "true"})
            assert gone.is_error and ("gone" in _text(gone) or "no bottle" in _text(gone)), _text(gone)
            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "worker"}))
            bid = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]
            assert _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "echo back"}))["stdout"] == "back\n"
            _ok(await client.call_tool("cleanup", {}))
