"""exec, wait_job and diff on the real engine, from no output to 100 MB: results a host passes whole.

Every result stays under the host's limit with its status first, the cut keeps the head and
the tail, and the whole output really is in the bottle at the path the result names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.labels import Instance
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory
from ..hostview import check_result

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MB = 1024**2
EXEC_STATUS = ["exit_code", "timed_out", "truncated", "stdout_bytes", "stderr_bytes", "stdout_path"]
# Commands writing N bytes: lines of text, bytes with no newline at all, and random binary.
SHAPES = {
    "lines": "seq 1 {n} | head -c {n}",
    "one line": "head -c {n} /dev/zero | tr '\\0' x",
    "binary": "head -c {n} /dev/urandom",
}


@pytest.fixture
async def client(write_manifest: ManifestFactory, worker_image: str, tmp_path: Path) -> AsyncIterator[Client]:
    manifest = write_manifest(
        f"""
        [host]
        approve = "never"

        [bottles.offline]
        image = "{worker_image}"

        [bottles.offline.resources]
        memory = "256m"
        tmp_size = "128m"

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )
    service = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=tmp_path, host_roots=[tmp_path]), DockerBackend(Instance.current())
    )
    async with Client(build_server(service)) as c:
        yield c


async def _bottle(client: Client) -> str:
    plan = await client.call_tool("prepare_bottle", {"agent": "worker"})
    launched = await client.call_tool("launch_bottle", {"plan_id": plan.structured_content["plan_id"]})
    return str(launched.structured_content["bottle_id"])


async def _exec(client: Client, bottle_id: str, command: str, **extra: object) -> dict[str, Any]:
    res = await client.call_tool("exec", {"bottle_id": bottle_id, "command": command, **extra})
    return check_result(res, EXEC_STATUS, command)


async def test_exec_output_from_nothing_to_100_mb_fits_with_head_tail_and_the_whole_kept(client: Client) -> None:
    bid = await _bottle(client)
    empty = await _exec(client, bid, "true")
    assert (empty["stdout"], empty["stderr"], empty["truncated"]) == ("", "", False)
    for shape, template in SHAPES.items():
        for n in (1, 16 * 1024, MB, 100 * MB):
            res = await _exec(client, bid, template.format(n=n) + " ; echo done >&2", timeout_s=120)
            assert res["exit_code"] == 0, res
            assert res["stdout_bytes"] == n, (shape, n)
            assert res["stderr"] == "done\n"
            if shape != "binary":  # binary output grows when escaped, so it may be cut at the cap already
                assert res["truncated"] is (n > 16 * 1024), (shape, n)
            if res["truncated"]:
                assert "cut here" in str(res["stdout"])
    # A known ending survives the cut, and the file holds every byte (past the 4 MiB kept: the tail file).
    res = await _exec(client, bid, "seq 1 20000000; echo THE-END")
    assert str(res["stdout"]).startswith("1\n2\n3\n") and str(res["stdout"]).endswith("19999999\n20000000\nTHE-END\n")
    path = res["stdout_path"]
    sizes = await _exec(client, bid, f"wc -c < {path}; wc -c < {path}.tail; tail -c 8 {path}.tail")
    kept, tail, end = str(sizes["stdout"]).split("\n", 2)
    assert int(kept) == 4 * MB and int(tail) == 8 * 1024 and end == "THE-END\n"
    # A command killed on timeout still shows what it wrote, head and tail.
    res = await _exec(client, bid, "seq 1 300000; echo LAST; sleep 60", timeout_s=3)
    assert res["timed_out"] is True and res["exit_code"] is None
    assert str(res["stdout"]).startswith("1\n2\n") and str(res["stdout"]).endswith("LAST\n")
    # A call may ask for more (on purpose past what hosts pass whole), within the manifest's ceiling.
    asked = await client.call_tool("exec", {"bottle_id": bid, "command": "seq 1 100000", "output_cap": 64 * 1024})
    more = asked.structured_content
    assert more is not None and more["output_cap_bytes"] == 64 * 1024 and len(more["stdout"]) > 60_000
    refused = await client.call_tool("exec", {"bottle_id": bid, "command": "true", "output_cap": 32 * MB})
    assert refused.is_error and "output_cap_max" in refused.content[0].text  # type: ignore[union-attr]


async def test_wait_job_on_100_mb_of_output_pages_in_results_that_fit(client: Client) -> None:
    bid = await _bottle(client)
    started = await _exec(client, bid, "head -c 104857600 /dev/urandom; echo fin >&2", background=True)
    job_id = started["job"]["job_id"]
    cursor = None
    pages = 0
    while True:
        seen: list[tuple[float, float | None]] = []

        async def on_progress(
            progress: float, total: float | None, message: str | None, seen: list[tuple[float, float | None]] = seen
        ) -> None:
            seen.append((progress, total))

        res = await client.call_tool(
            "wait_job", {"job_id": job_id, "timeout_s": 20, "cursor": cursor}, progress_callback=on_progress
        )
        data = check_result(res, ["done", "job", "next_cursor"], f"wait_job page {pages}")
        # Progress counts up against the total it announced, and its last notification reaches it.
        assert seen and all(total == 20 for _, total in seen) and seen[-1][0] == 20, seen
        assert [p for p, _ in seen] == sorted(p for p, _ in seen)
        pages += 1
        if data["done"] and not data["stdout"]["more"]:
            break
        cursor = data["next_cursor"]
        if pages >= 3 and data["done"]:
            break
    assert data["stdout"]["bytes_total"] == 32 * MB
    assert data["stdout"]["dropped_bytes"] == 68 * MB
    listed = await client.call_tool("list_jobs", {"bottle_id": bid})
    check_result(listed, ["total", "next_cursor"], "list_jobs")
