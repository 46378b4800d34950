"""The delegation part: agent runs, background jobs, copies out, commits and diffs.

It works on the live bottles it is given (live.py) and knows nothing of the lifecycle part. Policy
comes from the plan a bottle was launched with (its agent command, prompt and workdir) and from the
manifest's host roots; what comes back from the bottle is treated as hostile everywhere.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

import anyio

from .agents import agent_invocation
from .backends.base import Bottle
from .copyout import ExtractStats, confine_host_dest, extract_stream
from .errors import (
    AgentCommandError,
    BottleError,
    BottleGoneError,
    GitError,
    InvalidArgumentError,
    NotARepositoryError,
)
from .gitout import EMPTY_TREE, OID_RE, check_branch, import_bundle
from .jobs import Job, JobProgress, no_job_progress
from .live import LiveBottle, LiveBottles, RepoOrigin
from .models import ExecResult
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
from .shaping import page, run_saved
from .shaping import parse_cursor as parse_page_cursor

log = logging.getLogger(__name__)

T = TypeVar("T")
CP_OUT_LIMIT = 4 * 1024**3  # streamed: only the bottle's own disk limit makes a copy this large
BUNDLE_DIR = PurePosixPath("/tmp/bottle-mcp-out")
GIT = "git -c safe.directory='*'"


class Delegation:
    def __init__(
        self,
        live: LiveBottles,
        *,
        output_cap: Callable[[], int],
        host_roots: Callable[[], list[Path]],
        keeps_exec: Callable[[Path], bool] = lambda root: False,
        redact: Callable[[str], str] = lambda s: s,
        call_output_cap: Callable[[int | None], int] | None = None,
    ) -> None:
        self.live = live
        self.jobs = live.jobs
        self._output_cap = output_cap
        self._call_output_cap = call_output_cap or (lambda asked: asked or output_cap())
        self._host_roots = host_roots
        self._keeps_exec = keeps_exec
        self._redact = redact

    # -- jobs -----------------------------------------------------------------------------

    async def run_agent(self, bottle_id: str, prompt: str, *, timeout_s: float, workdir: str | None) -> JobInfo:
        entry = await self.live.get(bottle_id)
        plan = entry.plan
        if not prompt.strip():
            raise InvalidArgumentError("prompt is empty; say what the agent should do")
        system_prompt = plan.prompt.bottle_path if plan.prompt else None
        invocation = agent_invocation(plan.command, system_prompt)
        try:
            script = invocation.script(system_prompt)
        except ValueError as e:
            raise AgentCommandError(f"agent {plan.agent!r}: {e}; fix its command in the manifest") from None
        where = str(check_bottle_path(workdir, what="workdir")) if workdir else plan.workdir
        shown = invocation.display(system_prompt)
        if invocation.prompt_on_stdin:
            shown += ["<", "(the prompt, on stdin)"]
        async with self.live.guard(entry.bottle):
            return await self.jobs.start(
                entry.bottle,
                kind="agent",
                script=script,
                command=shown,
                workdir=where,
                timeout_s=timeout_s,
                prompt=prompt.encode(),
            )

    async def exec_background(self, bottle_id: str, command: str, *, timeout_s: float, workdir: str | None) -> JobInfo:
        entry = await self.live.get(bottle_id)
        where = str(check_bottle_path(workdir, what="workdir")) if workdir is not None else entry.plan.workdir
        async with self.live.guard(entry.bottle):
            return await self.jobs.start(
                entry.bottle,
                kind="exec",
                script=command + "\n",
                command=["/bin/sh", "-c", command],
                workdir=where,
                timeout_s=timeout_s,
            )

    async def wait_job(
        self, job_id: str, *, timeout_s: float, cursor: str | None, progress: JobProgress = no_job_progress
    ) -> JobResult:
        job = self.jobs.get(job_id)
        async with self.live.guard(job.bottle):
            return await self.jobs.wait(
                job_id, timeout_s=timeout_s, cursor=cursor, progress=progress, redact=self._redact
            )

    async def cancel_job(self, job_id: str) -> CancelResult:
        job = self.jobs.get(job_id)
        async with self.live.guard(job.bottle):
            return await self.jobs.cancel(job_id)

    async def list_jobs(self, bottle_id: str, *, cursor: str | None = None, limit: int = 50) -> JobList:
        entry = await self.live.get(bottle_id)
        every = self.jobs.of_bottle(bottle_id)
        first = parse_page_cursor(cursor, len(every))
        jobs = every[first : first + limit]  # only the page's jobs are read from the bottle
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
            async with self.live.guard(entry.bottle):
                raise gone[0]
        shown, _ = page([j.info() for j in jobs], 0, limit)
        end = first + len(shown)
        return JobList(total=len(every), next_cursor=str(end) if end < len(every) else None, jobs=shown)

    # -- results out ------------------------------------------------------------------------

    async def cp_out(self, bottle_id: str, bottle_path: str, host_path: str) -> CopyOutResult:
        entry = await self.live.get(bottle_id)
        src = check_bottle_path(bottle_path)
        dest, root = confine_host_dest(host_path, self._host_roots())
        started = time.monotonic()
        extract = partial(_extract, top=src.name, dest=dest, keep_exec=self._keeps_exec(root))
        stats = await self._read_tar(entry.bottle, src, extract)
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

    async def _read_tar(self, bottle: Bottle, src: PurePosixPath, consume: Callable[[IO[bytes]], T]) -> T:
        async with self.live.guard(bottle):
            return await bottle.read_tar(src, consume, max_bytes=CP_OUT_LIMIT)

    async def _sh(
        self, entry: LiveBottle, command: str, *, timeout_s: float, cap: int, workdir: str | None
    ) -> ExecResult:
        """Run a command of the server's own in the bottle (through the gone-bottle guard)."""
        async with self.live.guard(entry.bottle):
            return await entry.bottle.exec(command, timeout_s=timeout_s, workdir=workdir, output_cap=cap)

    @staticmethod
    def _origin(entry: LiveBottle) -> RepoOrigin:
        if entry.origin is None:
            raise NotARepositoryError(
                f"bottle {entry.id!r} was not launched with copy_cwd=true, so it has no host repository to "
                "bring commits back to; copy files out with cp_out instead"
            )
        return entry.origin

    async def _git(self, entry: LiveBottle, args: str, *, cap: int = 65536) -> tuple[int | None, str, bool]:
        res = await self._sh(entry, f"{GIT} {args}", timeout_s=120, cap=cap, workdir=entry.plan.workdir)
        if res.exit_code not in (0, 1):
            what = args.split(maxsplit=1)[0]
            raise GitError(f"git {what} failed in bottle {entry.id!r}: {res.stderr.strip()[:300]}")
        return res.exit_code, res.stdout, res.truncated

    async def _head(self, entry: LiveBottle) -> str | None:
        code, out, _ = await self._git(entry, "rev-parse --verify --quiet 'HEAD^{commit}'")
        head = out.strip()
        return head if code == 0 and OID_RE.match(head) else None

    async def fetch_branch(self, bottle_id: str, branch: str) -> BranchResult:
        entry = await self.live.get(bottle_id)
        origin = self._origin(entry)
        await anyio.to_thread.run_sync(check_branch, origin.host_repo, branch)
        head = await self._head(entry)
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
        res = await self._sh(
            entry,
            f"mkdir -p {BUNDLE_DIR} && {GIT} bundle create -q {shlex.quote(str(bundle))} {span}",
            timeout_s=300,
            cap=65536,
            workdir=entry.plan.workdir,
        )
        if res.exit_code != 0:
            raise GitError(f"making a git bundle in bottle {bottle_id!r} failed: {res.stderr.strip()[:300]}")
        with tempfile.TemporaryDirectory(prefix="bottle-mcp-bundle-") as tmp:
            local = Path(tmp) / name
            try:
                await self._read_tar(entry.bottle, bundle, partial(_extract, top=name, dest=local, keep_exec=False))
            finally:
                await self._sh(entry, f"rm -f {shlex.quote(str(bundle))}", timeout_s=30, cap=4096, workdir=None)
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

    async def diff(self, bottle_id: str, *, output_cap: int | None = None) -> DiffResult:
        entry = await self.live.get(bottle_id)
        origin = self._origin(entry)
        start = origin.start or EMPTY_TREE
        cap = self._call_output_cap(output_cap)
        _, stat, _ = await self._git(entry, f"diff --stat {start} --")
        # The whole diff stays in the bottle; the result holds its head and tail (shaping.py).
        async with self.live.guard(entry.bottle):
            res = await run_saved(
                entry.bottle, f"{GIT} diff {start} --", timeout_s=120, workdir=entry.plan.workdir, cap=cap
            )
        if res.exit_code not in (0, 1):
            raise GitError(f"git diff failed in bottle {entry.id!r}: {res.stderr.strip()[:300]}")
        _, untracked, _ = await self._git(entry, "ls-files --others --exclude-standard", cap=1024**2)
        files = [u for u in untracked.splitlines() if u]
        return DiffResult(
            bottle_id=bottle_id,
            start=origin.start,
            head=await self._head(entry),
            truncated=res.truncated,
            diff_bytes=res.stdout_bytes,
            diff_path=res.stdout_path,
            untracked_count=len(files),
            notes=[n.replace("output over the cap", "the diff over the cap") for n in res.notes],
            stat=stat,
            untracked=files,
            diff=res.stdout,
        )


def _extract(stream: IO[bytes], *, top: str, dest: Path, keep_exec: bool) -> ExtractStats:
    return extract_stream(stream, top, dest, keep_exec=keep_exec)
