"""Load: 1,000 execs at 16-way concurrency across 8 bottles over one stdio session."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from bench.run import server_rss_mb

pytestmark = pytest.mark.anyio

EXECS = 1000
CONCURRENCY = 16
BOTTLES = 8


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, " ".join(c.text for c in result.content if isinstance(c, TextContent))
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_a_thousand_concurrent_execs_fail_none_leave_no_process_and_keep_memory_flat(
    example_manifest: Path, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(example_manifest), "--warm-pool", "0"],
        env={k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ},
        cwd=str(tmp_path),
    )
    failures: list[str] = []
    rss: dict[int, float] = {}
    async with Client(params, mode="legacy") as client:
        with anyio.fail_after(180):
            ids: list[str] = []

            async def launch() -> None:
                plan = _ok(await client.call_tool("prepare_bottle", {"agent": "worker"}))
                ids.append(_ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"])

            async with anyio.create_task_group() as tg:
                for _ in range(BOTTLES):
                    tg.start_soon(launch)

            todo = iter(range(EXECS))

            async def worker() -> None:
                for i in todo:
                    bid = ids[i % BOTTLES]
                    # Some commands write to both streams, fail, or leave a child behind for a moment.
                    cmd = f"echo {i}; echo e{i} >&2; (sleep 0.01 &); exit {i % 3}"
                    result = await client.call_tool("exec", {"bottle_id": bid, "command": cmd, "timeout_s": 60})
                    if result.is_error:
                        failures.append(str(result.content))
                        continue
                    res = result.structured_content or {}
                    if (res.get("exit_code"), res.get("stdout"), res.get("stderr")) != (i % 3, f"{i}\n", f"e{i}\n"):
                        failures.append(f"exec {i}: {res}")
                    if i in (200, EXECS - 1):
                        rss[i] = server_rss_mb()

            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENCY):
                    tg.start_soon(worker)

            assert failures == []
            await anyio.sleep(0.2)  # the last background `sleep 0.01` children end
            for bid in ids:
                ps = _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "ps -e -o comm="}))
                left = sorted(set(ps["stdout"].split()) - {"docker-init", "sleep", "python3", "ps", "sh", "tini"})
                assert left == [], f"stray processes in {bid}: {ps['stdout']}"
                assert ps["stdout"].split().count("sleep") == 1, ps["stdout"]  # only the bottle's own
    assert not math.isnan(rss[200]), "the server process was not found"
    growth_mb = rss[EXECS - 1] - rss[200]
    assert growth_mb < 20, f"server memory grew {growth_mb:.1f} MB between exec 200 and exec {EXECS}"
