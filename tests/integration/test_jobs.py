"""Jobs, copies out and commits against the real engine, through the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import docker
import pytest

from bottle_mcp import jobs
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.errors import BottleGoneError, BottleNotFoundError, PathError
from bottle_mcp.labels import Instance
from bottle_mcp.results import JobResult
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
async def svc(write_manifest: ManifestFactory, standin_image: str, tmp_path: Path) -> AsyncIterator[BottleService]:
    manifest = write_manifest(
        f"""
        [bottles.standin]
        image = "{standin_image}"

        [agents.standin]
        bottle = "standin"
        command = ["standin-agent", "-p", "--output-format", "json", "{{prompt}}"]
        """
    )
    root = tmp_path / "root"
    root.mkdir()
    service = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=root, host_roots=[root], output_cap=256 * 1024),
        DockerBackend(Instance.current()),
    )
    try:
        yield service
    finally:
        await service.aclose()


async def _bottle(svc: BottleService) -> str:
    plan = await svc.prepare("standin")
    return (await svc.launch(plan.plan_id)).bottle_id


async def _until_done(svc: BottleService, job_id: str, cursor: str | None = None) -> JobResult:
    while True:
        res = await svc.delegate.wait_job(job_id, timeout_s=5, cursor=cursor)
        if res.done:
            return res


async def _job_processes(svc: BottleService, bid: str) -> str:
    res = await svc.exec(
        bid,
        "ps -eo sid,args | grep -v -e 'ps -eo' -e grep -e 'sleep infinity' -e docker-init -e bottle-mcp-exec-channel",
    )
    return "\n".join(res.stdout.splitlines()[1:])


async def test_a_job_past_its_deadline_is_killed_with_everything_it_started(svc: BottleService) -> None:
    with anyio.fail_after(90):
        bid = await _bottle(svc)
        job = await svc.delegate.run_agent(bid, "hang", timeout_s=2, workdir=None)
        res = await _until_done(svc, job.job_id)
        assert res.job.status == "timed_out" and res.job.exit_code is None
        assert any("deadline" in n for n in res.notes)
        assert await _job_processes(svc, bid) == ""


async def test_json_output_gives_a_structured_result_and_failures_keep_their_exit_code(svc: BottleService) -> None:
    with anyio.fail_after(90):
        bid = await _bottle(svc)
        job = await svc.delegate.run_agent(bid, "fail", timeout_s=60, workdir=None)
        res = await _until_done(svc, job.job_id)
        assert (res.job.status, res.job.exit_code) == ("exited", 3)
        assert res.agent_result is not None
        assert (res.agent_result.is_error, res.agent_result.final_answer) == (True, "failed on purpose")
        assert res.job.command == ["standin-agent", "-p", "--output-format", "json", "{prompt}"]


async def test_large_output_is_paged_with_cursors_and_kept_whole_in_the_bottle(svc: BottleService) -> None:
    with anyio.fail_after(120):
        bid = await _bottle(svc)
        started = await svc.exec(bid, "head -c 600000 /dev/zero | tr '\\0' 'x'; echo done >&2", background=True)
        assert started.job is not None and started.exit_code is None
        res = await _until_done(svc, started.job.job_id)
        pages = [res]
        while res.stdout.more:
            res = await svc.delegate.wait_job(started.job.job_id, timeout_s=1, cursor=res.next_cursor)
            pages.append(res)
        assert [len(p.stdout.text) for p in pages] == [262144, 262144, 600000 - 2 * 262144]
        assert pages[0].stderr.text == "done\n" and pages[1].stderr.text == ""
        assert res.stdout.bytes_total == 600000 and res.next_cursor == "600000:5"
        assert any(res.stdout.path in n for n in pages[0].notes)
        check = await svc.exec(bid, f"wc -c < {res.stdout.path}")
        assert check.stdout.strip() == "600000"


async def test_output_over_the_per_job_limit_is_counted_not_stored_and_the_job_runs_on(
    svc: BottleService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "STREAM_LIMIT", 1000)
    with anyio.fail_after(90):
        bid = await _bottle(svc)
        task = "flood 50000\nwrite after.txt: still running"
        job = await svc.delegate.run_agent(bid, task, timeout_s=60, workdir=None)
        res = await _until_done(svc, job.job_id)
        assert (res.job.status, res.job.exit_code) == ("exited", 0)
        assert res.stdout.bytes_total == 1000 and res.stdout.dropped_bytes > 49000
        assert res.agent_result is None and any("over the per-job limit" in n for n in res.notes)
        assert (await svc.exec(bid, "cat /workspace/after.txt")).stdout == "still running\n"


async def test_a_job_whose_runner_is_killed_inside_the_bottle_is_reported_lost(svc: BottleService) -> None:
    with anyio.fail_after(60):
        bid = await _bottle(svc)
        started = await svc.exec(bid, 'kill -KILL "$(cat "$BOTTLE_MCP_JOB_DIR/pid")"; sleep 1', background=True)
        assert started.job is not None
        res = await _until_done(svc, started.job.job_id)
        assert res.job.status == "lost"
        # The job folder is the agent's to tamper with: garbage where the exit status goes is no status.
        forged = await svc.exec(
            bid,
            'kill -KILL "$(cat "$BOTTLE_MCP_JOB_DIR/pid")"; '
            'printf "0; rm -rf /\\nstate exit 0" > "$BOTTLE_MCP_JOB_DIR/exit"',
            background=True,
        )
        assert forged.job is not None
        res = await _until_done(svc, forged.job.job_id)
        assert (res.job.status, res.job.exit_code) == ("lost", None)


async def test_jobs_of_a_stopped_bottle_are_gone_with_it(svc: BottleService) -> None:
    with anyio.fail_after(60):
        bid = await _bottle(svc)
        job = await svc.delegate.run_agent(bid, "hang", timeout_s=600, workdir=None)
        await svc.stop(bid)
        res = await svc.delegate.wait_job(job.job_id, timeout_s=1, cursor=None)
        assert res.done and res.job.status == "bottle_gone"
        with pytest.raises(BottleNotFoundError):
            await svc.delegate.list_jobs(bid)


async def test_cp_out_refuses_symlinks_and_skips_links_inside_folders(svc: BottleService, tmp_path: Path) -> None:
    with anyio.fail_after(60):
        bid = await _bottle(svc)
        await svc.exec(
            bid,
            "mkdir -p /workspace/out/sub && echo data > /workspace/out/sub/a.txt && "
            "ln -s /etc/passwd /workspace/out/pw && ln -s /etc /workspace/etc-link && mkfifo /workspace/out/fifo",
        )
        with pytest.raises(PathError, match="symlink"):
            await svc.delegate.cp_out(bid, "/workspace/etc-link", "etc")
        with pytest.raises(PathError, match="resolves to /etc"):
            await svc.delegate.cp_out(bid, "/workspace/etc-link/passwd", "passwd")
        with pytest.raises(PathError, match="does not exist"):
            await svc.delegate.cp_out(bid, "/workspace/missing", "missing")
        out = await svc.delegate.cp_out(bid, "/workspace/out", "out")
        root = tmp_path / "root"
        assert (root / "out" / "sub" / "a.txt").read_text() == "data\n"
        assert sorted(p.name for p in (root / "out").iterdir()) == ["sub"]
        assert (out.files, out.directories) == (1, 2)
        assert len(out.skipped) == 2 and any("/etc/passwd" in s for s in out.skipped)
        # the tmpfs folders are reachable too (the engine's archive API cannot see them)
        await svc.exec(bid, "echo tmp > /tmp/t.txt")
        await svc.delegate.cp_out(bid, "/tmp/t.txt", "t.txt")
        assert (root / "t.txt").read_text() == "tmp\n"


async def test_every_process_of_a_job_carries_its_marker(svc: BottleService) -> None:
    """What a failed or interrupted start relies on: killing by the marker alone leaves nothing."""
    with anyio.fail_after(60):
        bid = await _bottle(svc)
        job = await svc.delegate.run_agent(bid, "hang", timeout_s=600, workdir=None)
        assert not (await svc.delegate.wait_job(job.job_id, timeout_s=0.5, cursor=None)).done
        assert "standin-agent" in await _job_processes(svc, bid)
        await svc.exec(bid, jobs._sh(jobs.KILL_SH, job.job_id, 0))
        assert await _job_processes(svc, bid) == ""


async def test_a_bottle_removed_behind_the_servers_back_ends_its_jobs(
    svc: BottleService, docker_client: docker.DockerClient
) -> None:
    with anyio.fail_after(60):
        bid = await _bottle(svc)
        job = await svc.delegate.run_agent(bid, "hang", timeout_s=600, workdir=None)
        docker_client.api.remove_container(svc.live_bottles[0].container_id, force=True)  # type: ignore[attr-defined]
        with pytest.raises(BottleGoneError):
            await svc.delegate.list_jobs(bid)
        res = await svc.delegate.wait_job(job.job_id, timeout_s=1, cursor=None)
        assert res.done and res.job.status == "bottle_gone"
        with pytest.raises(BottleNotFoundError):
            await svc.delegate.list_jobs(bid)
        assert svc.live_bottles == []
