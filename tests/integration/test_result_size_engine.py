"""exec, wait_job and diff on the real engine, from no output to 100 MB: results a host passes whole.

Every result stays under the host's limit with its status first, the cut keeps the head and
the tail, and the whole output really is in the bottle at the path the result names.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from mcp import Client

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.labels import Instance
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig
from bottle_mcp.shaping import KEEP_RUNS

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
    # A call may ask for more (on purpose past what hosts pass whole), within the manifest's ceiling.
    asked = await client.call_tool("exec", {"bottle_id": bid, "command": "seq 1 100000", "output_cap": 64 * 1024})
    more = asked.structured_content
    assert more is not None and more["output_cap_bytes"] == 64 * 1024 and len(more["stdout"]) > 60_000
    refused = await client.call_tool("exec", {"bottle_id": bid, "command": "true", "output_cap": 32 * MB})
    assert refused.is_error and "output_cap_max" in refused.content[0].text  # type: ignore[union-attr]


async def test_the_newest_outputs_are_kept_and_older_ones_removed(client: Client) -> None:
    bid = await _bottle(client)
    paths = [str((await _exec(client, bid, f"seq 1 20000; echo run-{i}"))["stdout_path"]) for i in range(KEEP_RUNS + 4)]
    parent = str(PurePosixPath(paths[0]).parent.parent)
    listing = await _exec(
        client, bid, f"ls {parent} | wc -l; for p in {' '.join(paths)}; do test -e $p && echo y || echo n; done"
    )
    count, *present = str(listing["stdout"]).split()
    # The listing's own output is kept too: it is the newest, and the oldest of the others went for it.
    assert int(count) == KEEP_RUNS
    assert present == ["n"] * 5 + ["y"] * (KEEP_RUNS - 1)


@pytest.mark.xfail(
    strict=True,
    reason="known gap: since the exec channel is sealed, a command killed on timeout brings back its head only; "
    "the tail (and the whole output) stays in the bottle at stdout_path",
)
async def test_a_command_killed_on_timeout_shows_its_head_and_tail(client: Client) -> None:
    bid = await _bottle(client)
    res = await _exec(client, bid, "seq 1 300000; echo LAST; sleep 60", timeout_s=3)
    assert res["timed_out"] is True and res["exit_code"] is None
    assert str(res["stdout"]).startswith("1\n2\n") and str(res["stdout"]).endswith("LAST\n")


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
    # A 1 MB prompt and a 128 KiB command come back as short job descriptions; cancelling one fits too.
    agent = await client.call_tool("run_agent", {"bottle_id": bid, "prompt": "p" * 1_000_000})
    check_result(agent, ["job_id", "status"], "run_agent")
    long = await _exec(client, bid, "sleep 60 # " + "c" * 131_000, background=True)
    cancelled = await client.call_tool("cancel_job", {"job_id": long["job"]["job_id"]})
    assert check_result(cancelled, ["job", "processes_left"], "cancel_job")["job"]["status"] == "cancelled"


async def test_diff_and_fetch_branch_of_a_huge_change_fit(
    write_manifest: ManifestFactory, worker_image: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    (repo / "notes.txt").write_text("start\n")
    for args in (["init", "-q", "-b", "main"], ["add", "notes.txt"], ["commit", "-qm", "start"]):
        subprocess.run([*git, *args], check=True, capture_output=True)  # noqa: ASYNC221 - set-up, before serving
    manifest = write_manifest(
        f"""
        [host]
        approve = "never"

        [bottles.offline]
        image = "{worker_image}"

        [bottles.offline.resources]
        memory = "512m"
        tmp_size = "128m"

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )
    service = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=repo, host_roots=[repo]), DockerBackend(Instance.current())
    )
    async with Client(build_server(service)) as client:
        plan = await client.call_tool("prepare_bottle", {"agent": "worker", "copy_cwd": True})
        plan_id = check_result(plan, ["plan_id"], "prepare")["plan_id"]
        launched = await client.call_tool("launch_bottle", {"plan_id": plan_id})
        bid = check_result(launched, ["bottle_id"], "launch")["bottle_id"]
        change = (
            "seq 1 3000000 > notes.txt && mkdir -p new && for i in $(seq 1 3000); do : > new/untracked-$i.txt; done"
            " && git -c user.name=a -c user.email=a@example.com commit -qam \"$(head -c 3000 /dev/zero | tr '\\0' s)\""
            " && seq 1 1000000 >> notes.txt"
        )
        made = await _exec(client, bid, change, timeout_s=300)
        assert made["exit_code"] == 0, made
        diff = check_result(
            await client.call_tool("diff", {"bottle_id": bid}),
            ["truncated", "diff_bytes", "diff_path", "untracked_count"],
            "diff",
        )
        assert diff["truncated"] is True and diff["diff_bytes"] > 20_000_000 and diff["untracked_count"] == 3000
        assert diff["diff"].startswith("diff --git") and diff["diff_path"] in diff["diff"]
        kept = await _exec(client, bid, f"wc -c < {diff['diff_path']}")
        assert int(kept["stdout"]) == 4 * MB
        branch = check_result(
            await client.call_tool("fetch_branch", {"bottle_id": bid, "branch": "from-bottle"}),
            ["branch", "head"],
            "fetch_branch",
        )
        assert branch["branch"] == "from-bottle" and len(branch["commits"]) == 1


async def test_without_the_exec_channel_a_shell_wrapper_keeps_the_output_the_same_way(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow way (images without python3 for the channel): fifos, head -c, dd and tail in the bottle."""

    async def no_channel(self: DockerBottle, *args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(DockerBottle, "exec_kept", no_channel)
    bid = await _bottle(client)
    res = await _exec(client, bid, "seq 1 3000000; echo THE-END; echo oops >&2; exit 3")
    assert (res["exit_code"], res["stderr"], res["truncated"]) == (3, "oops\n", True)
    assert res["stdout"].startswith("1\n2\n") and res["stdout"].endswith("3000000\nTHE-END\n")
    sizes = await _exec(client, bid, f"wc -c < {res['stdout_path']}; tail -c 8 {res['stdout_path']}.tail")
    assert sizes["stdout"] == f"{4 * MB}\nTHE-END\n"
    killed = await _exec(client, bid, "seq 1 300000; echo LAST; sleep 60", timeout_s=3)
    assert killed["timed_out"] is True and killed["stdout"].endswith("LAST\n")
