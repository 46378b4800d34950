"""Background jobs in a bottle: agent runs and long commands that outlive a tool call.

Built only on the Bottle protocol (`exec` and `put_tar`), so any backend runs them.
A job is a folder in the bottle, `/tmp/bottle-mcp-jobs/<job_id>/`, and a detached runner:

    command.sh     what to run (the shell command, or a launcher that execs the agent's argv)
    prompt         the task prompt of an agent run (read from this file, never spliced into shell text)
    run.sh         the runner: a session leader that runs command.sh with stdout and stderr going
                   to the files below, each kept up to a limit (the rest is counted, not stored),
                   enforces the job's deadline, and writes the exit status last
    pid, stdout, stderr, stdout.dropped, stderr.dropped, exit, deadline (passed: being killed),
    timed_out (killed after its deadline)

The server learns the runner's pid (its session and process group id) when it starts the job and
keeps it; each wait reads the status and new output from byte offsets (the cursor). Cancelling
kills the job's session and process group and every process carrying the job's marker variable,
so children that started their own session die too.

Nothing the bottle reports is trusted beyond that bottle: statuses and sizes are parsed strictly,
output is decoded from base64 and made safe before it reaches the supervisor.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePosixPath

import anyio

from .agents import describe_line, parse_agent_result
from .backends.base import Bottle
from .errors import BottleError, BottleGoneError, InvalidArgumentError, JobError, JobNotFoundError, LimitError
from .labels import utc_stamp
from .output import complete_utf8, safe_text
from .paths import TarEntry, pack_tar
from .results import (
    AgentResult,
    CancelResult,
    JobInfo,
    JobKind,
    JobOutput,
    JobResult,
    JobStatus,
)
from .shaping import prefix_within

log = logging.getLogger(__name__)

JOBS_ROOT = PurePosixPath("/tmp/bottle-mcp-jobs")
STREAM_LIMIT = 32 * 1024**2  # bytes of each stream kept in the bottle per job
RESULT_TAIL = 1024**2  # bytes of an agent's stdout read to find its final result
PROGRESS_TAIL = 2048
MAX_RUNNING_PER_BOTTLE = 16
MAX_JOBS_KEPT = 256
POLL_FIRST_S = 0.2
POLL_MAX_S = 1.0
CONTROL_TIMEOUT_S = 30.0


def _program(name: str) -> str:
    """An in-bottle shell program shipped under bottle_mcp/data/inbottle/ (linted and tested as a file)."""
    return (resources.files("bottle_mcp") / "data" / "inbottle" / name).read_text(encoding="utf-8")


RUN_SH = _program("run.sh")  # the runner: output kept up to a limit, the deadline enforced, the exit status last
KILL_SH = _program("kill.sh")  # kill a job's session, process group and marked processes
COUNT_SH = _program("count.sh")  # how many of a job's processes are still alive
START_SH = _program("start.sh")  # start the runner detached in its own session; print its pid
POLL_SH = _program("poll.sh")  # one look at a job: state, sizes and output from offsets

JobProgress = Callable[[float, str], Awaitable[None]]


async def no_job_progress(_elapsed: float, _message: str) -> None:
    return None


# The control scripts run with the image's own tools (a read-only root), never whatever the bottle put
# earlier on its PATH.
CONTROL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the server reads about a job comes from inside the bottle: say so wherever it is reported.
ADVISORY_EXIT = (
    "the exit status was recorded inside the bottle by the job's runner: it is as trustworthy as the bottle "
    "(a process there could change it)"
)
ADVISORY_COUNT = "the count of processes left is read inside the bottle, as the bottle's user: advisory"


def _sh(script: str, *args: str | int, control: bool = True) -> str:
    """A script with its arguments; a control script (not the job's own runner) gets CONTROL_PATH."""
    quoted = " ".join(shlex.quote(str(a)) for a in args)
    path = f"PATH={CONTROL_PATH} " if control else ""
    return f"{path}/bin/sh -c {shlex.quote(script)} bottle-job {quoted}"


@dataclass
class Poll:
    """A parsed look at a job."""

    state: str  # running | exit | lost
    exit_code: int | None
    timed_out: bool
    sizes: dict[str, tuple[int, int]]
    tail: bytes
    out: bytes
    err: bytes


_STATE_RE = re.compile(r"^state (running|lost|exit ([0-9a-z]{0,16}))( timed_out)?$")
_SIZE_RE = re.compile(r"^size (stdout|stderr) ([0-9]{1,15}) ([0-9]{1,15})$")


def parse_poll(text: str) -> Poll:
    """Parse what POLL_SH printed; anything unexpected is an error, never a guess."""
    lines = text.split("\n")
    if len(lines) < 6:
        raise JobError("the bottle answered a job poll with malformed output; the job folder may be damaged")
    m = _STATE_RE.match(lines[0])
    if m is None:
        raise JobError(f"the bottle reported an unreadable job state {lines[0][:80]!r}")
    kind = m.group(1).split(" ")[0]
    # Anything but a number (say "killed", or what a hostile agent wrote there) is no exit status.
    code = int(m.group(2)) if m.group(2) and m.group(2).isdigit() and len(m.group(2)) <= 6 else None
    sizes: dict[str, tuple[int, int]] = {}
    for line in lines[1:3]:
        s = _SIZE_RE.match(line)
        if s is None:
            raise JobError(f"the bottle reported unreadable job sizes {line[:80]!r}")
        sizes[s.group(1)] = (int(s.group(2)), int(s.group(3)))

    def blob(line: str, tag: str) -> bytes:
        if not line.startswith(tag + " "):
            raise JobError(f"the bottle's job poll lacks its {tag!r} line")
        try:
            return base64.b64decode(line[len(tag) + 1 :], validate=True)
        except (binascii.Error, ValueError):
            raise JobError(f"the bottle's job poll has a malformed {tag!r} line") from None

    return Poll(
        state=kind,
        exit_code=code,
        timed_out=m.group(3) is not None,
        sizes=sizes,
        tail=blob(lines[3], "tail"),
        out=blob(lines[4], "out"),
        err=blob(lines[5], "err"),
    )


def parse_cursor(cursor: str | None) -> tuple[int, int]:
    if not cursor:
        return 0, 0
    m = re.fullmatch(r"([0-9]{1,15}):([0-9]{1,15})", cursor)
    if m is None:
        raise InvalidArgumentError(
            f"cursor {cursor[:40]!r} is not one this server issued; pass next_cursor from the last wait_job, "
            "or omit it to read from the start"
        )
    return int(m.group(1)), int(m.group(2))


@dataclass
class Job:
    job_id: str
    bottle: Bottle
    kind: JobKind
    command: list[str]
    workdir: str
    timeout_s: float
    started_at: str
    pid: int
    status: JobStatus = "running"
    exit_code: int | None = None
    agent_result: AgentResult | None = None
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def dir(self) -> PurePosixPath:
        return JOBS_ROOT / self.job_id

    @property
    def done(self) -> bool:
        return self.status != "running"

    def info(self) -> JobInfo:
        return JobInfo(
            job_id=self.job_id,
            bottle_id=self.bottle.id,
            kind=self.kind,
            command=self.command,
            workdir=self.workdir,
            status=self.status,
            exit_code=self.exit_code,
            started_at=self.started_at,
            timeout_s=self.timeout_s,
            output_dir=str(self.dir),
        )


class JobManager:
    """This server's jobs, across its bottles."""

    def __init__(self, output_cap: Callable[[], int]) -> None:
        self._jobs: dict[str, Job] = {}
        self._output_cap = output_cap
        # Told of every job once it runs (keep.py records it, for the next server to adopt).
        self.on_start: Callable[[Job], None] | None = None

    # -- starting ----------------------------------------------------------------------

    async def start(
        self,
        bottle: Bottle,
        *,
        kind: JobKind,
        script: str,
        command: list[str],
        workdir: str,
        timeout_s: float,
        prompt: bytes | None = None,
    ) -> JobInfo:
        running = [j for j in self._jobs.values() if j.bottle.id == bottle.id and not j.done]
        if len(running) >= MAX_RUNNING_PER_BOTTLE:
            raise LimitError(
                f"bottle {bottle.id!r} already runs {len(running)} jobs, the most one bottle may run at once; "
                "wait for one to end (wait_job) or cancel one (cancel_job)"
            )
        job_id = f"j-{secrets.token_hex(5)}"
        entries = [
            TarEntry(arcname=f"{job_id}/run.sh", data=RUN_SH.encode(), mode=0o600),
            TarEntry(arcname=f"{job_id}/kill.sh", data=KILL_SH.encode(), mode=0o600),
            TarEntry(arcname=f"{job_id}/command.sh", data=script.encode(), mode=0o600),
        ]
        if prompt is not None:
            entries.append(TarEntry(arcname=f"{job_id}/prompt", data=prompt, mode=0o600))
        with pack_tar(entries) as (tar, _stats):
            await bottle.put_tar(tar, JOBS_ROOT)
        try:
            pid = await self._launch(bottle, job_id, workdir, timeout_s)
        except BaseException:
            # Started or not, nothing of a job the server does not track may keep running.
            with anyio.CancelScope(shield=True), contextlib.suppress(BottleError):
                await bottle.exec(_sh(KILL_SH, job_id, 0), timeout_s=CONTROL_TIMEOUT_S, workdir=None, output_cap=4096)
            raise
        job = Job(
            job_id=job_id,
            bottle=bottle,
            kind=kind,
            command=command,
            workdir=workdir,
            timeout_s=timeout_s,
            started_at=utc_stamp(),
            pid=pid,
        )
        self._jobs[job_id] = job
        self._trim()
        log.info("job %s started in bottle %s (%s)", job_id, bottle.id, kind)
        if self.on_start is not None:
            self.on_start(job)
        return job.info()

    @staticmethod
    async def _launch(bottle: Bottle, job_id: str, workdir: str, timeout_s: float) -> int:
        res = await bottle.exec(
            _sh(START_SH, str(JOBS_ROOT / job_id), workdir, STREAM_LIMIT, max(1, int(timeout_s)), control=False),
            timeout_s=CONTROL_TIMEOUT_S,
            workdir=None,
            output_cap=4096,
        )
        pid = res.stdout.strip()
        if res.exit_code != 0 or not pid.isdigit() or int(pid) <= 1:
            raise JobError(
                f"the job did not start in bottle {bottle.id!r} (exit {res.exit_code}): "
                f"{(res.stderr or res.stdout).strip()[:300]}. The image needs /bin/sh, setsid and coreutils."
            )
        return int(pid)

    def adopt(self, job: Job) -> None:
        """Track a job a previous server started (its bottle was kept and adopted)."""
        self._jobs[job.job_id] = job

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.done]
        for j in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
            del self._jobs[j.job_id]

    # -- looking -----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def of_bottle(self, bottle_id: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.bottle.id == bottle_id]

    async def _poll(self, job: Job, offsets: tuple[int, int], chunk: int, tail: int) -> Poll:
        res = await job.bottle.exec(
            _sh(POLL_SH, str(job.dir), job.pid, offsets[0], offsets[1], chunk, tail),
            timeout_s=CONTROL_TIMEOUT_S,
            workdir=None,
            output_cap=3 * chunk + 2 * tail + 65536,
        )
        if res.exit_code != 0 or res.truncated:
            raise JobError(
                f"reading job {job.job_id!r} in bottle {job.bottle.id!r} failed (exit {res.exit_code}): "
                f"{res.stderr.strip()[:300]}"
            )
        poll = parse_poll(res.stdout)
        self._settle(job, poll)
        return poll

    @staticmethod
    def _settle(job: Job, poll: Poll) -> None:
        if job.done:
            return
        if job.cancelled and not (poll.state == "exit" and poll.exit_code is not None):
            job.status, job.exit_code = "cancelled", None
        elif poll.timed_out and poll.state != "running":
            job.status, job.exit_code = "timed_out", None
            job.notes.append(f"the job ran past its {job.timeout_s:g} s deadline; its processes were killed")
        elif poll.state == "exit" and poll.exit_code is not None:
            job.status, job.exit_code = "exited", poll.exit_code
            job.notes.append(ADVISORY_EXIT)
        elif poll.state in {"exit", "lost"}:
            job.status = "lost"
            job.notes.append("the job's runner died without an exit status (killed inside the bottle?)")

    async def refresh(self, job: Job) -> None:
        if not job.done:
            await self._guarded(job, self._poll(job, (0, 0), 0, 0))

    async def _guarded(self, job: Job, poll: Awaitable[Poll]) -> Poll:
        try:
            return await poll
        except BottleGoneError:
            job.status = "bottle_gone"
            raise

    # -- waiting -----------------------------------------------------------------------

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float,
        cursor: str | None,
        progress: JobProgress = no_job_progress,
        redact: Callable[[str], str] = lambda s: s,
    ) -> JobResult:
        job = self.get(job_id)
        offsets = parse_cursor(cursor)
        started = time.monotonic()
        interval = POLL_FIRST_S
        last_message = ""
        while not job.done:
            poll = await self._guarded(job, self._poll(job, (0, 0), 0, PROGRESS_TAIL))
            if job.done:
                break
            elapsed = time.monotonic() - started
            message = _progress_message(poll, elapsed)
            if message != last_message:
                await progress(elapsed, redact(message))
                last_message = message
            remaining = timeout_s - elapsed
            if remaining <= 0:
                break
            await anyio.sleep(min(interval, remaining))
            interval = min(interval * 2, POLL_MAX_S)
        return await self._collect(job, offsets, started)

    async def _collect(self, job: Job, offsets: tuple[int, int], started: float) -> JobResult:
        cap = self._output_cap()
        notes: list[str] = []
        if job.status == "bottle_gone":
            empty = JobOutput(text="", bytes_total=0, path="", more=False, dropped_bytes=0)
            return JobResult(
                job=job.info(),
                done=True,
                stdout=empty,
                stderr=empty,
                cursor=f"{offsets[0]}:{offsets[1]}",
                next_cursor=f"{offsets[0]}:{offsets[1]}",
                waited_ms=int((time.monotonic() - started) * 1000),
                notes=["the bottle is gone; its job output went with it"],
            )
        want_result = job.done and job.kind == "agent" and job.agent_result is None
        poll = await self._guarded(job, self._poll(job, offsets, cap, RESULT_TAIL if want_result else 0))
        if want_result:
            job.agent_result = parse_agent_result(poll.tail, text_cap=cap)
            if job.agent_result is None and poll.sizes["stdout"][1]:
                notes.append("no structured result: the agent's stdout went over the per-job limit")
        streams = []
        next_offsets = []
        for name, data, offset in (("stdout", poll.out, offsets[0]), ("stderr", poll.err, offsets[1])):
            total, dropped = poll.sizes[name]
            keep = len(data) if job.done and offset + len(data) >= total else complete_utf8(data)
            keep = prefix_within(data[:keep], cap)  # escaped characters count too
            text, made_safe = safe_text(data[:keep])
            notes += made_safe
            end = offset + keep
            streams.append(
                JobOutput(
                    text=text,
                    bytes_total=total,
                    path=str(job.dir / name),
                    more=end < total,
                    dropped_bytes=dropped,
                )
            )
            next_offsets.append(end)
            if end < total:
                notes.append(
                    f"{name}: returned {keep} of {total - offset} bytes after the cursor (cap {cap}); the whole "
                    f"stream is in {job.dir / name} ({total} bytes): wait_job again with next_cursor, or read "
                    "the file with exec or cp_out"
                )
            if dropped:
                notes.append(
                    f"{name}: the job wrote {dropped} bytes beyond the per-job limit of {STREAM_LIMIT} bytes; "
                    "they were discarded"
                )
        return JobResult(
            job=job.info(),
            done=job.done,
            stdout=streams[0],
            stderr=streams[1],
            cursor=f"{offsets[0]}:{offsets[1]}",
            next_cursor=f"{next_offsets[0]}:{next_offsets[1]}",
            agent_result=job.agent_result,
            waited_ms=int((time.monotonic() - started) * 1000),
            notes=list(dict.fromkeys(job.notes + notes)),
        )

    # -- cancelling --------------------------------------------------------------------

    async def cancel(self, job_id: str) -> CancelResult:
        job = self.get(job_id)
        notes: list[str] = []
        if job.status == "bottle_gone":
            return CancelResult(job=job.info(), processes_left=0, notes=["the bottle is gone, and the job with it"])
        was_done = job.done
        job.cancelled = True
        with anyio.CancelScope(shield=True):
            try:
                await job.bottle.exec(
                    _sh(KILL_SH, job.job_id, job.pid),
                    timeout_s=CONTROL_TIMEOUT_S,
                    workdir=None,
                    output_cap=4096,
                )
                left = await self._count(job)
            except BottleGoneError:
                job.status = "bottle_gone"
                raise
            await self.refresh(job)
        if job.status == "running":  # the runner outlived the kill: say so, never pretend
            notes.append("the job's runner is still alive after the kill")
        elif job.status == "cancelled":
            notes.append("the job was cancelled; its processes in the bottle were killed")
        else:
            shown = "had already ended" if was_done else "ended on its own before the kill"
            notes.append(f"the job {shown} ({job.status}); anything it left running was killed")
        if left:
            notes.append(f"{left} process(es) of the job are still alive in the bottle")
        notes.append(ADVISORY_COUNT)
        return CancelResult(job=job.info(), processes_left=left, notes=notes)

    async def _count(self, job: Job) -> int:
        res = await job.bottle.exec(
            _sh(COUNT_SH, job.job_id, job.pid), timeout_s=CONTROL_TIMEOUT_S, workdir=None, output_cap=4096
        )
        text = res.stdout.strip()
        return int(text) if text.isdigit() else -1

    def forget_bottle(self, bottle_id: str) -> None:
        for job in self.of_bottle(bottle_id):
            if not job.done:
                job.status = "bottle_gone"


def _progress_message(poll: Poll, elapsed: float) -> str:
    size = poll.sizes["stdout"][0] + poll.sizes["stderr"][0]
    head = f"running {elapsed:.0f} s, {size} bytes of output"
    for line in reversed(poll.tail.splitlines()):
        described = describe_line(line)
        if described:
            return f"{head}; {described}"
    return head
