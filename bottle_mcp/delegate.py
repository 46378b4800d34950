"""Delegating work to a bottle and collecting it: agent runs, background jobs, copies out, commits.

The service owns one `Delegation`; the MCP tools call it through the service. Policy comes
from the plan a bottle was launched with (its agent command, prompt and workdir) and from the
manifest's host roots; what comes back from the bottle is treated as hostile everywhere.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import anyio

from .agents import agent_invocation
from .backends.base import Bottle
from .copyout import confine_host_dest, extract_tar
from .errors import BottleError, BottleGoneError
from .gitout import EMPTY_TREE, OID_RE, check_branch, import_bundle
from .jobs import Job, JobManager
from .models import BottlePlan
from .paths import check_bottle_path
from .results import (
    BranchResult,
    CancelResult,
    CopyOutResult,
    DiffResult,
    JobInfo,
    JobList,
    JobResult,
)

if TYPE_CHECKING:
    from .service import BottleService

log = logging.getLogger(__name__)

CP_OUT_LIMIT = 256 * 1024**2  # the tar is held in memory on its way out
BUNDLE_DIR = PurePosixPath("/tmp/bottle-mcp-out")
GIT = "git -c safe.directory='*'"

Progress = Callable[[float, str], Awaitable[None]]


async def _no_progress(_elapsed: float, _message: str) -> None:
    return None


@dataclass(frozen=True)
class RepoOrigin:
    """Where a copy_cwd bottle's repository came from, and the commit it started at."""

    host_repo: Path
    start: str | None


class Delegation:
    def __init__(self, service: BottleService) -> None:
        self._service = service
        self.jobs = JobManager(lambda: service.output_cap)
        self._plans: dict[str, BottlePlan] = {}
        self._origins: dict[str, RepoOrigin] = {}

    # -- hooks the service calls -----------------------------------------------------------

    async def on_launch(self, bottle: Bottle, plan: BottlePlan) -> None:
        self._plans[bottle.id] = plan
        if plan.copy_cwd is None:
            return
        # Read before the launch call returns, so before anything of the agent's ran in the bottle.
        res = await bottle.exec(
            f"{GIT} rev-parse --verify --quiet 'HEAD^{{commit}}'", timeout_s=30, workdir=plan.workdir, output_cap=4096
        )
        head = res.stdout.strip()
        start = head if res.exit_code == 0 and OID_RE.match(head) else None
        self._origins[bottle.id] = RepoOrigin(host_repo=Path(plan.copy_cwd.host_repo), start=start)

    def on_stop(self, bottle_id: str) -> None:
        self.jobs.forget_bottle(bottle_id)
        self._plans.pop(bottle_id, None)
        self._origins.pop(bottle_id, None)

    def origin_of(self, bottle_id: str) -> RepoOrigin | None:
        return self._origins.get(bottle_id)

    def adopt(self, bottle: Bottle, plan: BottlePlan, origin: RepoOrigin | None, jobs: list[Job]) -> None:
        """Take over a kept bottle's plan, repository origin and jobs (see keep.py)."""
        self._plans[bottle.id] = plan
        if origin is not None:
            self._origins[bottle.id] = origin
        for job in jobs:
            self.jobs.adopt(job)

    def credential_names(self) -> set[str]:
        return {c.name for plan in self._plans.values() for c in plan.credentials}

    # -- jobs -----------------------------------------------------------------------------

    async def run_agent(self, bottle_id: str, prompt: str, *, timeout_s: float, workdir: str | None) -> JobInfo:
        bottle = await self._service.bottle(bottle_id)
        plan = self._plans[bottle_id]
        if not prompt.strip():
            raise BottleError("prompt is empty; say what the agent should do")
        system_prompt = plan.prompt.bottle_path if plan.prompt else None
        invocation = agent_invocation(plan.command, system_prompt)
        try:
            script = invocation.script(system_prompt)
        except ValueError as e:
            raise BottleError(f"agent {plan.agent!r}: {e}; fix its command in the manifest") from None
        where = str(check_bottle_path(workdir, what="workdir")) if workdir else plan.workdir
        shown = invocation.display(system_prompt)
        if invocation.prompt_on_stdin:
            shown += ["<", "(the prompt, on stdin)"]
        try:
            return await self.jobs.start(
                bottle,
                kind="agent",
                script=script,
                command=shown,
                workdir=where,
                timeout_s=timeout_s,
                prompt=prompt.encode(),
            )
        except BottleGoneError:
            await self._service.discard(bottle)
            raise

    async def exec_background(self, bottle: Bottle, command: str, *, timeout_s: float, workdir: str | None) -> JobInfo:
        plan = self._plans.get(bottle.id)
        where = workdir or (plan.workdir if plan else "/")
        try:
            return await self.jobs.start(
                bottle,
                kind="exec",
                script=command + "\n",
                command=["/bin/sh", "-c", command],
                workdir=where,
                timeout_s=timeout_s,
            )
        except BottleGoneError:
            await self._service.discard(bottle)
            raise

    async def wait_job(
        self, job_id: str, *, timeout_s: float, cursor: str | None, progress: Progress = _no_progress
    ) -> JobResult:
        job = self.jobs.get(job_id)
        try:
            return await self.jobs.wait(
                job_id, timeout_s=timeout_s, cursor=cursor, progress=progress, redact=self._service.redactor.text
            )
        except BottleGoneError:
            await self._service.discard(job.bottle)
            raise

    async def cancel_job(self, job_id: str) -> CancelResult:
        job = self.jobs.get(job_id)
        try:
            return await self.jobs.cancel(job_id)
        except BottleGoneError:
            await self._service.discard(job.bottle)
            raise

    async def list_jobs(self, bottle_id: str) -> JobList:
        bottle = await self._service.bottle(bottle_id)
        jobs = self.jobs.of_bottle(bottle_id)
        gone: list[BottleGoneError] = []

        async def refresh(job: Job) -> None:
            try:
                await self.jobs.refresh(job)
            except BottleGoneError as e:
                gone.append(e)
            except BottleError as e:  # one unreadable job must not hide the others
                log.warning("could not read job %s: %s", job.job_id, e)

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(refresh, job)
        if gone:
            await self._service.discard(bottle)
            raise gone[0]
        return JobList(jobs=[j.info() for j in jobs])

    # -- results out ------------------------------------------------------------------------

    async def cp_out(self, bottle_id: str, bottle_path: str, host_path: str) -> CopyOutResult:
        bottle = await self._service.bottle(bottle_id)
        src = check_bottle_path(bottle_path)
        dest, _root = confine_host_dest(host_path, self._service.host_roots())
        started = time.monotonic()
        data = await self._get_tar(bottle, src)
        stats = await anyio.to_thread.run_sync(extract_tar, data, src.name, dest)
        return CopyOutResult(
            bottle_id=bottle_id,
            bottle_path=str(src),
            host_path=str(dest),
            files=stats.files,
            directories=stats.directories,
            bytes=stats.bytes,
            written=stats.written,
            skipped=stats.skipped,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def _get_tar(self, bottle: Bottle, src: PurePosixPath) -> bytes:
        try:
            return await bottle.get_tar(src, max_bytes=CP_OUT_LIMIT)
        except BottleGoneError:
            await self._service.discard(bottle)
            raise

    def _origin(self, bottle_id: str) -> RepoOrigin:
        origin = self._origins.get(bottle_id)
        if origin is None:
            raise BottleError(
                f"bottle {bottle_id!r} was not launched with copy_cwd=true, so it has no host repository to "
                "bring commits back to; copy files out with cp_out instead"
            )
        return origin

    async def _git(self, bottle: Bottle, args: str, *, cap: int = 65536) -> tuple[int | None, str, bool]:
        plan = self._plans[bottle.id]
        try:
            res = await bottle.exec(f"{GIT} {args}", timeout_s=120, workdir=plan.workdir, output_cap=cap)
        except BottleGoneError:
            await self._service.discard(bottle)
            raise
        if res.exit_code not in (0, 1):
            what = args.split(maxsplit=1)[0]
            raise BottleError(f"git {what} failed in bottle {bottle.id!r}: {res.stderr.strip()[:300]}")
        return res.exit_code, res.stdout, res.truncated

    async def _head(self, bottle: Bottle) -> str | None:
        code, out, _ = await self._git(bottle, "rev-parse --verify --quiet 'HEAD^{commit}'")
        head = out.strip()
        return head if code == 0 and OID_RE.match(head) else None

    async def fetch_branch(self, bottle_id: str, branch: str) -> BranchResult:
        bottle = await self._service.bottle(bottle_id)
        origin = self._origin(bottle_id)
        await anyio.to_thread.run_sync(check_branch, origin.host_repo, branch)
        head = await self._head(bottle)
        base = BranchResult(
            bottle_id=bottle_id,
            host_repo=str(origin.host_repo),
            branch=None,
            start=origin.start,
            head=head,
            descends_from_start=True,
            commits=[],
            diffstat="",
        )
        if head is None:
            return base.model_copy(update={"notes": ["the bottle's repository has no commits"]})
        if head == origin.start:
            return base.model_copy(update={"notes": ["no new commits since the start; nothing was brought back"]})
        name = f"commits-{secrets.token_hex(4)}.bundle"
        bundle = BUNDLE_DIR / name
        span = f"HEAD ^{origin.start}" if origin.start else "HEAD"
        res = await bottle.exec(
            f"mkdir -p {BUNDLE_DIR} && {GIT} bundle create -q {shlex.quote(str(bundle))} {span}",
            timeout_s=300,
            workdir=self._plans[bottle_id].workdir,
            output_cap=65536,
        )
        if res.exit_code != 0:
            raise BottleError(f"making a git bundle in bottle {bottle_id!r} failed: {res.stderr.strip()[:300]}")
        try:
            data = await self._get_tar(bottle, bundle)
        finally:
            await bottle.exec(f"rm -f {shlex.quote(str(bundle))}", timeout_s=30, workdir=None, output_cap=4096)
        with tempfile.TemporaryDirectory(prefix="bottle-mcp-bundle-") as tmp:
            local = Path(tmp) / name
            await anyio.to_thread.run_sync(extract_tar, data, name, local)
            imported = await anyio.to_thread.run_sync(import_bundle, origin.host_repo, local, branch, origin.start)
        notes = []
        if not imported.descends_from_start:
            notes.append("the bottle rewrote history: its HEAD does not descend from the start commit")
        log.info("brought %d commit(s) back from %s as %s", len(imported.commits), bottle_id, branch)
        return base.model_copy(
            update={
                "branch": branch,
                "head": imported.head,
                "descends_from_start": imported.descends_from_start,
                "commits": imported.commits,
                "diffstat": imported.diffstat,
                "notes": notes,
            }
        )

    async def diff(self, bottle_id: str) -> DiffResult:
        bottle = await self._service.bottle(bottle_id)
        origin = self._origin(bottle_id)
        start = origin.start or EMPTY_TREE
        cap = self._service.output_cap
        _, stat, _ = await self._git(bottle, f"diff --stat {start} --")
        _, diff, truncated = await self._git(bottle, f"diff {start} --", cap=cap)
        _, untracked, _ = await self._git(bottle, "ls-files --others --exclude-standard")
        return DiffResult(
            bottle_id=bottle_id,
            start=origin.start,
            head=await self._head(bottle),
            stat=stat,
            diff=diff,
            untracked=[u for u in untracked.splitlines() if u][:1000],
            truncated=truncated,
        )
