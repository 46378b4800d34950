"""Results made for the host that reads them, on the fake backend (fast, every tool the fake can run).

Each tool is driven with outputs from nothing to 100 MB (or the list equivalent: thousands of
entries with long untrusted fields); every result must stay under the host's limit with its
status in the first 2 KB. Also: progress that ends where it says it will, and bad arguments
explained in sentences. exec, wait_job and list_jobs at 100 MB on the real engine are in
tests/integration/test_result_size_engine.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from bottle_mcp.backends.fake import FakeBackend, FakeBottle, FakeWorld
from bottle_mcp.labels import Instance
from bottle_mcp.models import EgressDecision, EgressRecords, GateEvent, GateRecords
from bottle_mcp.results import BranchResult, CommitInfo, CopyOutResult
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig
from bottle_mcp.shaping import RESULT_CHAR_LIMIT

from ..conftest import ManifestFactory
from ..hostview import check_result, compact

pytestmark = pytest.mark.anyio

MB = 1024**2
SIZES = [0, 1, 16 * 1024, 40 * 1024, MB, 100 * MB]
MANIFEST = """\
[host]
approve = "never"
max_bottles = 1000

[bottles.offline]
image = "bottle-mcp/worker:latest"

[agents.worker]
bottle = "offline"
command = ["true"]
"""


@pytest.fixture
async def setup(write_manifest: ManifestFactory, tmp_path: Path) -> AsyncIterator[tuple[Client, BottleService]]:
    path = write_manifest(MANIFEST)
    world = FakeWorld()
    service = BottleService(
        ServiceConfig(manifest_path=path, cwd=tmp_path, host_roots=[tmp_path], approvals_log=tmp_path / "a.jsonl"),
        FakeBackend(Instance.current(), world),
    )
    with anyio.fail_after(120):
        async with Client(build_server(service)) as client:
            yield client, service


async def _bottle(client: Client) -> str:
    plan = check_result(await client.call_tool("prepare_bottle", {"agent": "worker"}), ["plan_id"], "prepare")
    launched = await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]})
    return str(check_result(launched, ["bottle_id", "status"], "launch")["bottle_id"])


async def test_exec_from_nothing_to_100_mb_on_either_stream_fits(setup: tuple[Client, BottleService]) -> None:
    client, _ = setup
    bid = await _bottle(client)
    status = ["exit_code", "timed_out", "truncated", "stdout_bytes", "stderr_bytes", "stdout_path"]
    for n in SIZES:
        for source in ("/dev/zero", "/dev/urandom"):
            for where in ("", " >&2"):
                cmd = f"head -c {n} {source}{where}"
                data = check_result(await client.call_tool("exec", {"bottle_id": bid, "command": cmd}), status, cmd)
                assert data["stdout_bytes" if not where else "stderr_bytes"] == n
                # Over the cap it is cut; under it too when escaped bytes (NUL shows as \x00) make it too long.
                assert data["truncated"] is True if n > 16 * 1024 else n > 0 or data["truncated"] is False


def _decision(i: int) -> EgressDecision:
    return EgressDecision(
        time="2026-01-01T00:00:00Z",
        action="deny",
        kind="HTTPS",
        host=f"h{i}.example.com" + "x" * 300,
        port=443,
        reason="not on the allow-list",
        method="GET",
        path="/" + "p" * 5000,
    )


def _event(i: int) -> GateEvent:
    return GateEvent(
        time="2026-01-01T00:00:00Z",
        kind="refused",
        remote="origin",
        refs=[f"refs/heads/b{i}-{j}" + "r" * 500 for j in range(10)],
        detail="d" * 5000,
        findings=["secret " * 300] * 5,
    )


async def test_logs_of_thousands_of_entries_page_with_cursors_and_fit(
    setup: tuple[Client, BottleService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = setup
    bid = await _bottle(client)
    for count in (0, 1, 3000):

        async def egress(self: FakeBottle, count: int = count) -> tuple[list[str], EgressRecords]:
            return [f"host{i}.example.com" for i in range(2000)], EgressRecords([_decision(i) for i in range(count)])

        async def gate(self: FakeBottle, count: int = count) -> tuple[dict[str, str], dict[str, str], GateRecords]:
            return {"origin": "git@example.com:a/b.git"}, {}, GateRecords([_event(i) for i in range(count)])

        monkeypatch.setattr(FakeBottle, "egress_log", egress)
        monkeypatch.setattr(FakeBottle, "gate_log", gate)
        for tool, items in (("egress_log", "decisions"), ("gate_log", "events")):
            data = check_result(await client.call_tool(tool, {"bottle_id": bid}), ["total", "next_cursor"], tool)
            assert data["total"] == count
            seen = len(data[items])
            cursor = data["next_cursor"]
            pages = 0
            while cursor is not None and pages < 3:  # paging on works and each page fits
                more = await client.call_tool(tool, {"bottle_id": bid, "cursor": cursor})
                page = check_result(more, ["total", "first"], f"{tool} page")
                assert page["first"] == int(cursor) and page[items]
                cursor = page["next_cursor"]
                seen += len(page[items])
                pages += 1
            if count:
                assert seen >= 1
            first = await client.call_tool(tool, {"bottle_id": bid, "cursor": "0", "limit": 1000})
            assert check_result(first, ["total"], f"{tool} from 0")["first"] == 0


async def test_lists_of_hundreds_of_bottles_and_cleanup_reports_fit(
    setup: tuple[Client, BottleService], write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    client, service = setup
    world = service.backend.world  # type: ignore[attr-defined]
    dead = replace(Instance.current(), id="gone", boot_id="an-earlier-boot")
    other = BottleService(
        ServiceConfig(manifest_path=service.config.manifest_path, cwd=tmp_path), FakeBackend(dead, world)
    )
    for _ in range(400):
        await other.launch((await other.prepare("worker")).plan_id)
    data = check_result(await client.call_tool("list_active", {}), ["total", "next_cursor", "this_server"], "list")
    assert data["total"] == 400 and data["next_cursor"] is not None
    rest = check_result(await client.call_tool("list_active", {"cursor": data["next_cursor"]}), ["total"], "list 2")
    assert rest["bottles"][0]["bottle_id"] not in {b["bottle_id"] for b in data["bottles"]}
    for dry_run in (True, False):
        report = check_result(await client.call_tool("cleanup", {"dry_run": dry_run}), ["dry_run", "summary"], "cl")
        assert re.match(r"(would remove|removed) 800, kept 0, failed 0; listed here: the first", report["summary"])
    doctor = await client.call_tool("doctor", {})
    check_result(doctor, ["verdict", "summary"], "doctor")


async def test_copies_in_and_out_of_thousands_of_files_report_what_fits(
    setup: tuple[Client, BottleService], tmp_path: Path
) -> None:
    client, _ = setup
    bid = await _bottle(client)
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / (f"f{i:05d}-" + "n" * 200)).write_text("x")
    copied = await client.call_tool("cp_in", {"bottle_id": bid, "host_path": str(src), "bottle_path": "/workspace/m"})
    assert check_result(copied, ["files", "bytes"], "cp_in")["files"] == 3000
    # cp_out's lists (the fake cannot pack folders): thousands of long paths still fit.
    out = CopyOutResult(
        bottle_id=bid,
        files=3000,
        directories=1,
        bytes=3000,
        duration_ms=1,
        bottle_path="/workspace/m",
        host_path=str(tmp_path / "back"),
        skipped=[f"/workspace/m/link{i}" + "s" * 700 + ": a symlink" for i in range(3000)],
        written=[str(tmp_path / "back" / f"f{i}") + "w" * 5000 for i in range(3000)],
    )
    shown = compact(out.model_dump(mode="json"))
    assert len(shown) < RESULT_CHAR_LIMIT and shown.index('"files"') < 2000
    assert out.written[-1].startswith("[... and ")
    commits = [CommitInfo(sha="a" * 40, subject="s" * 5000) for _ in range(200)]
    branch = BranchResult(
        branch="b",
        bottle_id=bid,
        host_repo="/r",
        start=None,
        head=None,
        descends_from_start=True,
        commits=commits,
        diffstat="x" * 1_000_000,
    )
    assert len(compact(branch.model_dump(mode="json"))) < RESULT_CHAR_LIMIT
    stopped = await client.call_tool("stop_bottle", {"bottle_id": bid})
    check_result(stopped, ["bottle_id"], "stop")


async def test_launch_progress_promises_no_total_and_counts_up_to_the_running_bottle(
    setup: tuple[Client, BottleService],
) -> None:
    client, _ = setup
    plan = check_result(await client.call_tool("prepare_bottle", {"agent": "worker"}), ["plan_id"], "prepare")
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    launched = await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}, progress_callback=on_progress)
    assert not launched.is_error
    assert seen and all(total is None for _, total, _ in seen)
    assert [p for p, _, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][2] == f"bottle {launched.structured_content['bottle_id']} is running"


def _text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.mark.parametrize(
    ("tool", "args", "says"),
    [
        (
            "exec",
            {"bottle_id": "b-1", "command": "x", "timeout_s": 0},
            "'timeout_s' is 0, out of range; allowed: a number above 0 and at most 3600",
        ),
        ("exec", {"bottle_id": "b-1"}, "Argument 'command' is required but was not given"),
        (
            "exec",
            {"bottle_id": "b-1", "command": "x", "output_cap": 10},
            "'output_cap' is 10, out of range; allowed: a whole number at least 1024",
        ),
        (
            "egress_log",
            {"bottle_id": "x" * 100},
            "'bottle_id' is 100 characters long; allowed: a string at most 64 characters",
        ),
        ("cleanup", {"dry_run": "maybe"}, "'dry_run' is 'maybe', which is not the right type; allowed: true or false"),
        ("wait_job", {"job_id": "j-1", "timeout_s": 900}, "'timeout_s' is 900, out of range"),
    ],
)
async def test_bad_arguments_are_explained_in_sentences(
    setup: tuple[Client, BottleService], tool: str, args: dict[str, Any], says: str
) -> None:
    client, _ = setup
    result = await client.call_tool(tool, args)
    assert result.is_error
    message = _text(result)
    assert says in message, message
    assert message.startswith(f"Invalid arguments for {tool}: ") and message.endswith("Fix the call and try again.")
    assert "pydantic" not in message and "http" not in message and "validation error" not in message
    assert re.search(r"The arguments of \w+ are: ", message)
