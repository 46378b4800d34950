"""Kept bottles: what a server leaves running when its client goes away, and adoption by the next one.

When `serve` keeps (`[host] on_exit = "keep"` with `keep_for` above zero, or `serve --on-exit
keep`), every bottle it launches gets, at launch:

- a record in the user's state folder (`$XDG_STATE_HOME/bottle-mcp/bottles/<bottle_id>.json`):
  the manifest's path and digest, the user, the plan, where a copy_cwd repository came from, and
  every job started in it (written again at each job start). It is written before the launch
  returns, so nothing is left to write when the server goes away, however it goes;
- a lease: an exclusive `flock` on `leases/<bottle_id>.lock` in the same folder, held for as long
  as the server drives the bottle. The kernel drops it when the process ends, even by SIGKILL, so
  two servers never drive one bottle and a crashed one never blocks the next;
- a deadline the backend enforces on its own (on Docker, a reaper container: see
  backends/docker/keeper.py) that the running server keeps moving to `now + keep_for`. Once no
  server moves it, the bottle, its sidecars, networks and volumes are removed when it passes.

A server started later by the same user with the same manifest (path and content digest) takes
the leases of the kept bottles it finds, moves their deadlines, and drives them as its own: same
bottle ids and job ids, plans and repository origins from the records. A changed manifest leaves
them alone and says so in list_active.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from pydantic import BaseModel, ValidationError

from .backends.base import Backend, Bottle
from .errors import BottleError, EngineError
from .jobs import Job
from .labels import Instance
from .manifest import LoadedManifest
from .models import BottleInfo, BottlePlan, CleanupPlan
from .results import JobKind

log = logging.getLogger(__name__)

OnExit = Literal["keep", "remove"]
RECORD_VERSION = 1
# A kept bottle whose deadline is this close is left to its reaper rather than adopted.
ADOPT_MARGIN_S = 3
EXIT_BUDGET_S = 0.3
# How long the way out (or a stop) waits for reapers still starting; a start takes well under a second.
ARM_WAIT_S = 3.0
# On the way out with on_exit = "remove": what the server has not removed by then, its reapers do.
REMOVE_GRACE_S = 5


class Keeper(Protocol):
    """What a backend offers for keeping bottles (the Docker backend's `keeper`)."""

    def unavailable(self) -> str | None: ...
    async def arm(self, bottle_id: str, until: int) -> None: ...
    async def extend(self, bottle_id: str, until: int) -> bool: ...
    async def disarm(self, bottle_id: str) -> None: ...
    async def deadlines(self) -> dict[str, int]: ...
    async def reattach(self, bottle_id: str, env: dict[str, str], *, channel: bool = True) -> Bottle: ...
    async def remove_bottle(self, bottle_id: str) -> list[str]: ...


class KeepHost(Protocol):
    """What keeping needs from the server (the service): its backend, identity, manifest and live bottles."""

    backend: Backend
    instance: Instance

    @property
    def manifest(self) -> LoadedManifest: ...

    def owned_ids(self) -> set[str]: ...

    def register_adopted(
        self, bottle: Bottle, plan: BottlePlan, origin: tuple[str, str | None] | None, jobs: list[Job]
    ) -> None: ...


def keeper_of(backend: Backend) -> Keeper | None:
    keeper = getattr(backend, "keeper", None)
    return keeper if keeper is not None and keeper.unavailable() is None else None


# -- records and leases on the host --------------------------------------------------------------


def state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "bottle-mcp"


class JobRecord(BaseModel):
    job_id: str
    kind: JobKind
    command: list[str]
    workdir: str
    timeout_s: float
    started_at: str
    pid: int


class BottleRecord(BaseModel):
    version: int = RECORD_VERSION
    bottle_id: str
    manifest: str
    manifest_sha256: str
    uid: int
    plan: BottlePlan
    origin_repo: str | None = None
    origin_start: str | None = None
    jobs: list[JobRecord] = []
    launched_by: str  # owner stamp of the server that launched it


def _records() -> Path:
    return state_dir() / "bottles"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_record(rec: BottleRecord) -> None:
    folder = _private_dir(_records())
    tmp = folder / f".{rec.bottle_id}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(rec.model_dump_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / f"{rec.bottle_id}.json")


def read_record(bottle_id: str) -> BottleRecord | None:
    try:
        return BottleRecord.model_validate_json((_records() / f"{bottle_id}.json").read_text())
    except (OSError, ValidationError, ValueError):
        return None


def all_records() -> dict[str, BottleRecord]:
    out: dict[str, BottleRecord] = {}
    with contextlib.suppress(OSError):
        for p in _records().glob("*.json"):
            rec = read_record(p.stem)
            if rec is not None:
                out[rec.bottle_id] = rec
    return out


def delete_record(bottle_id: str) -> None:
    with contextlib.suppress(OSError):
        (_records() / f"{bottle_id}.json").unlink()


def find_job(job_id: str) -> tuple[BottleRecord, JobRecord] | None:
    """The record of the bottle a job of this user runs in, and the job's own."""
    for rec in all_records().values():
        for job in rec.jobs:
            if job.job_id == job_id:
                return rec, job
    return None


def take_lease(bottle_id: str, owner: str) -> int | None:
    """An open, exclusively locked lease file (its fd), or None when another process holds it."""
    folder = _private_dir(state_dir() / "leases")
    fd = os.open(folder / f"{bottle_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, owner.encode(), 0)
    return fd


def lease_holder(bottle_id: str) -> str | None:
    """Who holds a bottle's lease (its owner stamp), or None when nobody does."""
    path = state_dir() / "leases" / f"{bottle_id}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 200, 0).decode(errors="replace") or "another server"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def release_lease(fd: int, bottle_id: str) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        (state_dir() / "leases" / f"{bottle_id}.lock").unlink()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def refresh_interval(keep_for_s: int) -> float:
    return float(min(60, max(1, keep_for_s // 4)))


# -- the service's side ------------------------------------------------------------------------


class KeepManager:
    """This server's side of keeping: leases, records, deadlines, adoption and the way out."""

    def __init__(self, service: KeepHost, on_exit: OnExit | None, keep_for_s: int | None) -> None:
        self._service = service
        self.on_exit: OnExit = on_exit or "remove"
        self._serving = on_exit is not None  # a library user (no `serve`) keeps nothing and adopts nothing
        self._keep_for_override = keep_for_s
        self.keeper = keeper_of(service.backend) if self._serving else None
        self._leases: dict[str, int] = {}
        self._armed: set[str] = set()
        self._adopting = anyio.Lock()  # one adoption at a time: a lease is locked once per process
        # Reapers still being started, each with the event set when its start ended (run_forever).
        self._arming: dict[str, anyio.Event] = {}
        self._arm_send, self._arm_receive = anyio.create_memory_object_stream[tuple[str, int]](max_buffer_size=1024)
        self._running = False

    @property
    def keep_for_s(self) -> int:
        if self._keep_for_override is not None:
            return self._keep_for_override
        from .manifest import parse_duration

        return parse_duration(self._service.manifest.manifest.host.keep_for)

    @property
    def armed(self) -> bool:
        """Whether bottles launched now get a record, a lease and a deadline (keep_for above zero)."""
        return self.keeper is not None and self.keep_for_s > 0

    @property
    def keeping(self) -> bool:
        """Whether bottles launched now are kept when the client goes away."""
        return self.armed and self.on_exit == "keep"

    def _manifest_id(self) -> tuple[str, str]:
        lm = self._service.manifest
        return str(Path(lm.path).resolve()), lm.sha256

    # -- hooks the service calls ----------------------------------------------------------------

    async def on_launch(self, bottle: Bottle, plan: BottlePlan, origin: tuple[str, str | None] | None) -> None:
        """Record, lease and arm a bottle just launched; a failure leaves it unkept (removed at exit)."""
        if not self.armed or self.keeper is None:
            return
        path, sha = self._manifest_id()
        owner = self._service.instance.owner
        fd = take_lease(bottle.id, owner)
        if fd is None:  # a fresh bottle id: nobody else can hold it
            log.warning("bottle %s: its lease is held elsewhere; it will not be kept", bottle.id)
            return
        self._leases[bottle.id] = fd
        rec = BottleRecord(
            bottle_id=bottle.id,
            manifest=path,
            manifest_sha256=sha,
            uid=os.getuid(),
            plan=plan,
            origin_repo=origin[0] if origin else None,
            origin_start=origin[1] if origin else None,
            launched_by=owner,
        )
        try:
            write_record(rec)
        except OSError as e:
            log.warning("bottle %s will be removed, not kept, when the client goes away: %s", bottle.id, e)
            self._drop(bottle.id)
            return
        until = int(time.time()) + self.keep_for_s
        if not self._running or self.on_exit == "remove":
            # No server loop (a library user with on_exit set), or bottles that must not outlive the
            # server: the reaper is there when the launch answers, so the way out can move its deadline
            # to a few seconds before anything (a SIGKILL of the host included) cuts it short.
            await self._arm(bottle.id, until)
            return
        # Kept bottles: the reaper starts while the launch answers, off the launch's path. However the
        # server ends meanwhile, the reaper it gets keeps the bottle for keep_for, as any kept bottle;
        # only a crash before it starts leaves the bottle to `cleanup`.
        self._arming[bottle.id] = anyio.Event()
        try:
            self._arm_send.send_nowait((bottle.id, until))
        except anyio.WouldBlock:  # over a thousand reapers still starting: this one starts here
            await self._arm(bottle.id, until)

    async def _arm(self, bottle_id: str, until: int) -> None:
        assert self.keeper is not None
        try:
            with anyio.CancelScope(shield=True):  # the way out waits for it, rather than leave it half made
                await self.keeper.arm(bottle_id, until)
        except (OSError, BottleError) as e:
            log.warning("bottle %s will be removed, not kept, when the client goes away: %s", bottle_id, e)
            self._drop(bottle_id)
        else:
            self._armed.add(bottle_id)
        finally:
            done = self._arming.pop(bottle_id, None)
            if done is not None:
                done.set()

    def _drop(self, bottle_id: str) -> None:
        delete_record(bottle_id)
        fd = self._leases.pop(bottle_id, None)
        if fd is not None:
            release_lease(fd, bottle_id)

    async def _settle(self, bottle_ids: list[str] | None = None, budget_s: float = ARM_WAIT_S) -> None:
        """Wait (at most `budget_s`) for the reapers still starting, of `bottle_ids` or of every bottle."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(budget_s):
            for bid in list(self._arming) if bottle_ids is None else bottle_ids:
                event = self._arming.get(bid)
                if event is not None:
                    await event.wait()

    def on_job(self, job: Job) -> None:
        bottle_id = job.bottle.id
        if bottle_id not in self._armed:
            return
        rec = read_record(bottle_id)
        if rec is None:
            return
        rec.jobs.append(
            JobRecord(
                job_id=job.job_id,
                kind=job.kind,
                command=job.command,
                workdir=job.workdir,
                timeout_s=job.timeout_s,
                started_at=job.started_at,
                pid=job.pid,
            )
        )
        try:
            write_record(rec)
        except OSError as e:
            log.warning("could not record job %s of bottle %s: %s", job.job_id, bottle_id, e)

    async def on_stop(self, bottle_id: str) -> None:
        """The bottle was removed on purpose (or vanished): its reaper, record and lease go too."""
        await self._settle([bottle_id])  # a reaper started after its bottle went would wait for nothing
        if bottle_id in self._armed and self.keeper is not None:
            self._armed.discard(bottle_id)
            with anyio.CancelScope(shield=True):
                await self.keeper.disarm(bottle_id)
        delete_record(bottle_id)
        fd = self._leases.pop(bottle_id, None)
        if fd is not None:
            release_lease(fd, bottle_id)

    async def run_forever(self) -> None:
        """While the server runs: start the reapers of new bottles, and keep every deadline at now + keep_for."""
        if self.keeper is None:
            return
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._refresh_forever)
                async with self._arm_receive:
                    async for bottle_id, until in self._arm_receive:
                        tg.start_soon(self._arm, bottle_id, until)
        finally:
            self._running = False

    async def _refresh_forever(self) -> None:
        while True:
            await anyio.sleep(refresh_interval(self.keep_for_s))
            await self._extend_all(int(time.time()) + self.keep_for_s)

    async def _extend_all(self, until: int) -> None:
        assert self.keeper is not None
        keeper = self.keeper

        async def one(bottle_id: str) -> None:
            try:
                if not await keeper.extend(bottle_id, until):
                    log.warning("bottle %s lost its reaper; it will be removed, not kept, at exit", bottle_id)
                    self._armed.discard(bottle_id)
            except EngineError as e:
                log.warning("could not move the deadline of bottle %s: %s", bottle_id, e)

        async with anyio.create_task_group() as tg:
            for bottle_id in list(self._armed):
                tg.start_soon(one, bottle_id)

    async def leave(self, bottles: list[Bottle]) -> list[Bottle]:
        """On the way out: keep what can be kept; return the bottles that must be removed now.

        Safe under SIGKILL at any point: the records and deadlines were written long before, and
        the last deadline move is one atomic engine call per bottle. When removing, the deadlines
        move to a few seconds from now first, so a removal the host cuts short is finished by
        the reapers.
        """
        await self._settle()
        if self.keeper is None or not self._armed:
            return bottles
        if self.on_exit == "remove":
            with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_BUDGET_S):
                await self._extend_all(int(time.time()) + REMOVE_GRACE_S)
            return bottles
        kept = [b for b in bottles if b.id in self._armed]
        if kept:
            until = int(time.time()) + self.keep_for_s
            with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_BUDGET_S):
                await self._extend_all(until)
            for b in kept:
                detach = getattr(b, "detach", None)
                if detach is not None:
                    detach()
            log.info(
                "kept %d bottle(s) until %s for the next server of this manifest: %s",
                len(kept),
                iso(until),
                ", ".join(b.id for b in kept),
            )
        for bottle_id, fd in list(self._leases.items()):
            if bottle_id in self._armed:
                os.close(fd)  # the lease file stays; the next server locks it
            else:
                release_lease(fd, bottle_id)
        self._leases.clear()
        return [b for b in bottles if b.id not in self._armed]

    # -- adoption ---------------------------------------------------------------------------------

    async def adopt_all(self) -> list[str]:
        """Take over the kept bottles of this manifest and user; return their ids."""
        if self.keeper is None:
            return []
        records = all_records()
        if not records:
            return []
        deadlines = await self.keeper.deadlines()
        adopted: list[str] = []
        async with self._adopting:
            for bid, rec in records.items():
                if bid not in self._service.owned_ids() and await self._try_adopt(bid, rec, deadlines.get(bid)) is None:
                    adopted.append(bid)
        if adopted:
            log.info("adopted %d kept bottle(s): %s", len(adopted), ", ".join(adopted))
        return adopted

    async def adopt(self, bottle_id: str) -> str | None:
        """Adopt one kept bottle now; None when it is this server's now, else why not.

        For a bottle that was kept after this server started: its server still drove it when this
        one looked at start, or an adoption failed then and may succeed now.
        """
        if self.keeper is None:
            return "this server keeps and adopts no bottles"
        rec = read_record(bottle_id)
        if rec is None:
            return "no record of it was kept for this user"
        async with self._adopting:
            if bottle_id in self._service.owned_ids():
                return None
            deadlines = await self.keeper.deadlines()
            why = await self._try_adopt(bottle_id, rec, deadlines.get(bottle_id))
        if why is None:
            log.info("adopted kept bottle %s on first use", bottle_id)
        return why

    async def _try_adopt(self, bid: str, rec: BottleRecord, until: int | None) -> str | None:
        """Adopt `bid` if it is kept for this server's manifest and user; None on success, else why not."""
        if until is None:
            if lease_holder(bid) is None:
                delete_record(bid)  # its reaper is gone, so is the bottle (or cleanup will find it)
            return "it has no reaper, so it is not kept"
        path, sha = self._manifest_id()
        if rec.manifest != path or rec.manifest_sha256 != sha or rec.uid != os.getuid():
            return _why_not_mine(rec, path, sha)
        if until < time.time() + ADOPT_MARGIN_S:
            return "its deadline is about to pass; its reaper removes it"
        fd = take_lease(bid, self._service.instance.owner)
        if fd is None:
            return f"adopted by the server {lease_holder(bid) or 'another server'}, which still runs"
        try:
            await self._adopt(rec, fd)
        except (BottleError, EngineError) as e:
            log.warning("could not adopt kept bottle %s: %s", bid, e)
            release_lease(fd, bid)
            return f"adopting it failed: {e}"
        return None

    async def _adopt(self, rec: BottleRecord, fd: int) -> None:
        assert self.keeper is not None
        # The deadline moves first: from here on the bottle lives as long as this server does.
        if not await self.keeper.extend(rec.bottle_id, int(time.time()) + self.keep_for_s):
            raise BottleError("its reaper is gone")
        env = {"BOTTLE_AGENT": rec.plan.agent}
        env.update({c.name: os.environ[c.name] for c in rec.plan.credentials if c.name in os.environ})
        bottle = await self.keeper.reattach(rec.bottle_id, env)
        self._leases[rec.bottle_id] = fd
        self._armed.add(rec.bottle_id)
        jobs = [
            Job(
                job_id=j.job_id,
                bottle=bottle,
                kind=j.kind,
                command=j.command,
                workdir=j.workdir,
                timeout_s=j.timeout_s,
                started_at=j.started_at,
                pid=j.pid,
            )
            for j in rec.jobs
        ]
        origin = (rec.origin_repo, rec.origin_start) if rec.origin_repo else None
        self._service.register_adopted(bottle, rec.plan, origin, jobs)

    # -- what others see ----------------------------------------------------------------------------

    async def annotate(self, infos: list[BottleInfo]) -> list[BottleInfo]:
        """list_active rows with kept bottles marked, and why this server leaves them alone."""
        manifest = self._manifest_id() if self._serving else None
        return await annotate(self._service.backend, infos, self._service.owned_ids(), manifest)

    async def spare_kept(self, plan: CleanupPlan) -> CleanupPlan:
        """A cleanup plan that leaves kept bottles (deadline not passed) to their reapers."""
        return await spare_kept(self._service.backend, plan)


async def annotate(
    backend: Backend, infos: list[BottleInfo], owned: set[str], manifest: tuple[str, str] | None
) -> list[BottleInfo]:
    """Mark kept bottles (with their deadline) and say why a server with `manifest` leaves them alone."""
    keeper = _any_keeper(backend)
    deadlines = await keeper.deadlines() if keeper is not None else {}
    records = all_records() if deadlines else {}
    path, sha = manifest or ("", "")
    out: list[BottleInfo] = []
    for info in infos:
        if info.bottle_id in owned:
            out.append(info.model_copy(update={"owner": "this-server"}))
            continue
        until = deadlines.get(info.bottle_id)
        if until is None or info.owner in ("this-server", "unknown"):
            out.append(info)
            continue
        update: dict[str, Any] = {"kept_until": iso(until)}
        holder = lease_holder(info.bottle_id)
        if holder is not None and info.owner == "orphaned":
            update |= {"owner": "other-server", "note": f"adopted by the server {holder}, which still runs"}
        elif info.owner == "orphaned":
            update |= {"owner": "kept", "note": _why_not_mine(records.get(info.bottle_id), path, sha)}
        out.append(info.model_copy(update=update))
    return out


def _any_keeper(backend: Backend) -> Keeper | None:
    keeper: Keeper | None = getattr(backend, "keeper", None)
    return keeper


def _why_not_mine(rec: BottleRecord | None, path: str, sha: str) -> str:
    if rec is None:
        return "kept by a server of another user (or its record is gone); it removes itself at kept_until"
    if rec.uid != os.getuid():
        return f"kept for user {rec.uid}"
    if not path:
        return f"kept for the next server of manifest {rec.manifest}"
    if rec.manifest != path:
        return f"kept for the next server of manifest {rec.manifest}, not this server's {path}"
    if rec.manifest_sha256 != sha:
        return (
            f"kept for the next server of {rec.manifest}, but that manifest changed since it was launched "
            f"(sha256 {rec.manifest_sha256[:12]} then, {sha[:12]} now); this server leaves it alone until it "
            "removes itself at kept_until, or `bottle-mcp stop BOTTLE` removes it"
        )
    return "kept; the next server of this manifest adopts it"


async def spare_kept(backend: Backend, plan: CleanupPlan) -> CleanupPlan:
    keeper = _any_keeper(backend)
    if keeper is None:
        return plan
    deadlines = await keeper.deadlines()
    now = time.time()
    kept_ids = {bid for bid, until in deadlines.items() if until > now}
    remove = [i for i in plan.remove if i.bottle_id not in kept_ids]
    spared = [i.model_copy(update={"owner": "kept"}) for i in plan.remove if i.bottle_id in kept_ids]
    return CleanupPlan(remove=remove, keep=plan.keep + spared)


def describe_left(kept_until: str) -> str:
    """'14m05s left' for an ISO deadline as list_active gives it."""
    until = datetime.strptime(kept_until, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    left = max(0, int(until - time.time()))
    if left >= 3600:
        return f"{left // 3600}h{left % 3600 // 60:02d}m left"
    if left >= 60:
        return f"{left // 60}m{left % 60:02d}s left"
    return f"{left}s left"
