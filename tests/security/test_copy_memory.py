"""A bottle cannot make the server hold its copies in memory: cp_in and cp_out stream.

The attack: copy a 1 GiB file out of (and into) a bottle, then three at once, while the test samples the
resident memory of the real stdio server process. Growth over the idle level must stay within 64 MiB for
one copy and 128 MiB for three.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from bench.run import server_rss_mb

pytestmark = pytest.mark.anyio

GIB = 1024**3
ONE_LIMIT_MB = 64 * 1.048576  # MiB in the MB server_rss_mb reports
THREE_LIMIT_MB = 128 * 1.048576


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, " ".join(c.text for c in result.content if isinstance(c, TextContent))
    assert isinstance(result.structured_content, dict)
    return result.structured_content


@contextmanager
def _peak_rss() -> Iterator[list[float]]:
    """Sample the server's RSS every 20 ms while the block runs; yields [peak] (filled in at the end)."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = server_rss_mb()
            if rss == rss:  # not NaN
                peak[0] = max(peak[0], rss)
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


async def test_copies_of_a_gigabyte_stream_through_the_server(tmp_path: Path, runtime: str) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        f"""
[host]
keep_for = "0"  # removed when the server goes, not kept
approve = "never"

[bottles.big]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"

[bottles.big.resources]
memory = "512m"
pids = 512
disk = "8g"

[agents.big]
bottle = "big"
command = ["true"]
"""
    )
    root = tmp_path / "root"
    root.mkdir()
    for i in range(3):
        (root / f"in{i}.bin").touch()
        os.truncate(root / f"in{i}.bin", GIB)  # sparse on the host: 1 GiB of zeros to read, nothing to store
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(manifest), "--warm-pool", "0"],
        env={k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ},
        cwd=str(root),
    )
    figures: list[str] = []
    async with Client(params, mode="legacy") as client:
        with anyio.fail_after(900):
            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "big"}))
            bid = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]

            async def sh(command: str) -> None:
                _ok(await client.call_tool("exec", {"bottle_id": bid, "command": command, "timeout_s": 300}))

            # Sparse in the bottle too: the tar still carries 1 GiB of zeros each.
            await sh("for i in 0 1 2; do truncate -s 1G /workspace/out$i.bin; done; echo warm > /workspace/w")
            _ok(await client.call_tool("cp_out", {"bottle_id": bid, "bottle_path": "/workspace/w", "host_path": "w"}))
            _ok(await client.call_tool("cp_in", {"bottle_id": bid, "host_path": "w", "bottle_path": "/workspace/w2"}))
            base = server_rss_mb()

            async def out(i: int) -> None:
                res = _ok(
                    await client.call_tool(
                        "cp_out",
                        {"bottle_id": bid, "bottle_path": f"/workspace/out{i}.bin", "host_path": f"out{i}.bin"},
                    )
                )
                assert res["bytes"] == GIB

            async def into(i: int) -> None:
                res = _ok(
                    await client.call_tool(
                        "cp_in", {"bottle_id": bid, "host_path": f"in{i}.bin", "bottle_path": f"/workspace/in{i}.bin"}
                    )
                )
                assert res["bytes"] == GIB

            for name, fn, limit in (("cp_out", out, ONE_LIMIT_MB), ("cp_in", into, ONE_LIMIT_MB)):
                with _peak_rss() as peak:
                    await fn(0)
                figures.append(f"one {name} of 1 GiB: +{peak[0] - base:.1f} MB over {base:.1f} MB")
                assert peak[0] - base <= limit, figures
                await sh("rm -f /workspace/in0.bin")
                (root / "out0.bin").unlink(missing_ok=True)

            for name, fn, limit in (("cp_out", out, THREE_LIMIT_MB), ("cp_in", into, THREE_LIMIT_MB)):
                with _peak_rss() as peak:
                    async with anyio.create_task_group() as tg:
                        for i in range(3):
                            tg.start_soon(fn, i)
                figures.append(f"three {name} of 1 GiB at once: +{peak[0] - base:.1f} MB over {base:.1f} MB")
                assert peak[0] - base <= limit, figures
                await sh("rm -f /workspace/in*.bin")
                for i in range(3):
                    (root / f"out{i}.bin").unlink(missing_ok=True)
    print("\n" + "\n".join(figures))
