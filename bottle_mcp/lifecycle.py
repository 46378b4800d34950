"""The lifecycle part: plans, launching, driving and stopping this server's bottles, limits, shutdown.

It is where the manifest's policy meets the caller's arguments: host paths are confined here,
plans are checked against the manifest on disk before launch, and a bottle can be driven only by
the server that launched it. The live bottles themselves belong to `LiveBottles` (live.py), which
this part shares with the delegation part; the two never call each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .backends.base import Backend, Bottle, Progress, _no_progress
from .credentials import check_launchable
from .errors import LimitError, StalePlanError, UnknownPlanError
from .gitout import OID_RE
from .jobs import Job
from .keep import KeepManager, OnExit, spare_kept
from .labels import Instance
from .live import LiveBottles, RepoOrigin
from .manifest import ApprovePolicy, LoadedManifest, load_manifest, parse_size
from .models import (
    BottleInfo,
    BottlePlan,
    BottleSpec,
    CleanupReport,
    CopyResult,
    EgressLog,
    ExecResult,
    GateLog,
    LaunchResult,
    StopResult,
)
from .paths import TarEntry, check_bottle_path, confine_host_path, packed_tar
from .redact import Redactor
from .shaping import PAGE_BUDGET, page, parse_cursor, run_saved
from .textfit import clip_list

log = logging.getLogger(__name__)

LOG_RESULT_OVERHEAD = 4096  # a log result's fields besides its records (the allow-list is clipped to 4000)

MAX_PLANS = 256
SHUTDOWN_BUDGET_S = 1.8
GIT = "git -c safe.directory='*'"


@dataclass
class ServiceConfig:
    manifest_path: Path
    cwd: Path = field(default_factory=Path.cwd)
    host_roots: list[Path] | None = None  # None: from the manifest, else the cwd
    output_cap: int | None = None  # None: from the manifest
    warm_pool: int | None = None  # spares per bottle definition; None: each bottle's warm_pool in the manifest
    approve: ApprovePolicy | None = None  # None: from the manifest's [host] approve
    approvals_log: Path | None = None  # None: the user's state folder (see approval.default_log_path)
    # What happens to the bottles when the client goes away (keep.py). None: a library user, who
    # keeps nothing and adopts nothing; `serve` sets it from --on-exit or the manifest's [host] on_exit.
    on_exit: OnExit | None = None
    keep_for_s: int | None = None  # None: the manifest's [host] keep_for


class Lifecycle:
    def __init__(self, config: ServiceConfig, backend: Backend, live: LiveBottles | None = None) -> None:
        self.config = config
        self.backend = backend
        self.instance: Instance = backend.instance
        self.manifest: LoadedManifest = load_manifest(config.manifest_path)
        self._plans: OrderedDict[str, tuple[BottlePlan, BottleSpec]] = OrderedDict()
        self.live = live or LiveBottles(list_active=self.list_active, output_cap=lambda: self.output_cap)
        self.redactor = Redactor(self._credential_names)
        self.keep = KeepManager(self, config.on_exit, config.keep_for_s)
        self.live.jobs.on_start = self.keep.on_job
        self.live.on_discard = self.keep.on_stop
        self.live.adopt = self.keep.adopt
        self.closed = threading.Event()  # set once aclose has kept or removed every bottle

    # -- helpers ---------------------------------------------------------------------

    def _reload(self) -> LoadedManifest:
        """The manifest as it is on disk now (the human may edit it while the server runs)."""
        self.manifest = load_manifest(self.config.manifest_path)
        return self.manifest

    @property
    def output_cap(self) -> int:
        if self.config.output_cap is not None:
            return self.config.output_cap
        return parse_size(self.manifest.manifest.host.output_cap)

    def call_output_cap(self, asked: int | None) -> int:
        """The cap of one call: the default, or what the call asked for within [host] output_cap_max."""
        if asked is None:
            return self.output_cap
        ceiling = max(self.output_cap, parse_size(self.manifest.manifest.host.output_cap_max))
        if asked > ceiling:
            raise LimitError(
                f"output_cap {asked} is above this server's ceiling of {ceiling} bytes per stream ([host] "
                f"output_cap_max in the manifest); ask for at most {ceiling}, or leave it out for the default "
                f"of {self.output_cap}"
            )
        return asked

    def host_roots(self) -> list[Path]:
        if self.config.host_roots:
            return [r.resolve() for r in self.config.host_roots]
        return self.manifest.host_roots(self.config.cwd)

    def _credential_names(self) -> set[str]:
        """Every credential the manifest (as now, or as at any live bottle's launch) forwards."""
        names = {c for agent in self.manifest.manifest.agents.values() for c in agent.credentials}
        return names | self.live.credential_names()

    # -- the operations -----------------------------------------------------------------

    async def prepare(self, agent: str, *, copy_cwd: bool = False) -> BottlePlan:
        lm = self._reload()
        spec = BottleSpec(manifest=lm, agent=agent, copy_cwd=copy_cwd, cwd=self.config.cwd)
        plan = await self.backend.prepare(spec)
        self._plans[plan.plan_id] = (plan, spec)
        while len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)
        return plan

    def stored_plan(self, plan_id: str) -> tuple[BottlePlan, BottleSpec]:
        """The plan as prepare_bottle returned it (not checked against the manifest on disk)."""
        if plan_id not in self._plans:
            raise UnknownPlanError(plan_id)
        return self._plans[plan_id]

    async def check_plan(self, plan_id: str) -> tuple[BottlePlan, BottleSpec]:
        """The stored plan, provided the manifest and the files it names still give the same plan."""
        if plan_id not in self._plans:
            raise UnknownPlanError(plan_id)
        plan, spec = self._plans[plan_id]
        lm = self._reload()
        fresh_spec = BottleSpec(manifest=lm, agent=spec.agent, copy_cwd=spec.copy_cwd, cwd=spec.cwd)
        fresh = await self.backend.prepare(fresh_spec)
        if lm.sha256 != plan.manifest_sha256 or fresh.digest != plan.digest:
            raise StalePlanError(
                f"plan {plan_id!r} no longer matches the manifest or the files it names (they changed since "
                "prepare_bottle); call prepare_bottle again, review the new plan and launch its plan_id"
            )
        return plan, fresh_spec

    async def launch(
        self, plan_id: str, progress: Progress = _no_progress, *, expect_digest: str | None = None
    ) -> LaunchResult:
        """Launch a stored plan; with `expect_digest`, only if it is still exactly that plan (an approved one)."""
        started = time.monotonic()
        plan, spec = await self.check_plan(plan_id)
        if expect_digest is not None and plan.digest != expect_digest:
            raise StalePlanError(
                f"plan {plan_id!r} is not the plan that was approved (digest {plan.digest}, approved "
                f"{expect_digest}); call prepare_bottle again and launch the new plan_id"
            )
        live = self.live
        check_launchable(plan)
        limit = self.manifest.manifest.host.max_bottles
        if len(live) + live.launching >= limit:
            raise LimitError(
                f"this server already runs {len(live)} bottles (and launches {live.launching}), the "
                "limit set by [host] max_bottles; stop one with stop_bottle first"
            )
        live.launching += 1  # reserved before the first await, so concurrent launches see it
        try:
            bottle = await self.backend.launch(plan, spec, progress)
        finally:
            live.launching -= 1
        entry = live.add(bottle, plan)
        try:
            entry.origin = origin = await _repo_origin(bottle, plan)
            await self.keep.on_launch(bottle, plan, (str(origin.host_repo), origin.start) if origin else None)
        except BaseException:  # gone, failed or cancelled: a half-launched bottle is not kept
            await live.discard(bottle)
            raise
        return LaunchResult(
            bottle_id=bottle.id,
            status=bottle.info.status,
            runtime=bottle.info.runtime,
            agent=plan.agent,
            image=plan.image,
            workdir=plan.workdir,
            duration_ms=int((time.monotonic() - started) * 1000),
            provisioned=_provisioned(plan),
        )

    async def exec(
        self,
        bottle_id: str,
        command: str,
        *,
        timeout_s: float = 60,
        workdir: str | None = None,
        output_cap: int | None = None,
    ) -> ExecResult:
        cap = self.call_output_cap(output_cap)
        entry = await self.live.get(bottle_id)
        if workdir is not None:
            workdir = str(check_bottle_path(workdir, what="workdir"))
        async with self.live.guard(entry.bottle):
            # The whole output stays in the bottle; the result holds its head and tail (shaping.py).
            return await run_saved(entry.bottle, command, timeout_s=timeout_s, workdir=workdir, cap=cap)

    async def cp_in(self, bottle_id: str, host_path: str, bottle_path: str) -> CopyResult:
        entry = await self.live.get(bottle_id)
        src, root = confine_host_path(host_path, self.host_roots())
        dest = check_bottle_path(bottle_path)
        started = time.monotonic()
        # Packing reads up to 2 GiB from disk: a worker thread under the backend's limiter, never the event loop.
        tar, stats = await self.backend.offload(packed_tar, [TarEntry(arcname=dest.name, source=src, root=root)])
        with tar:
            async with self.live.guard(entry.bottle):
                await entry.bottle.put_tar(tar, dest.parent)
        return CopyResult(
            bottle_id=bottle_id,
            host_path=str(src),
            bottle_path=str(dest),
            files=stats.files,
            directories=stats.directories,
            symlinks=stats.symlinks,
            bytes=stats.bytes,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def stop(self, bottle_id: str) -> StopResult:
        entry = await self.live.get(bottle_id)
        removed = await self.live.discard(entry.bottle)
        return StopResult(bottle_id=bottle_id, removed=removed)

    async def egress_log(self, bottle_id: str, *, limit: int = 100, cursor: str | None = None) -> EgressLog:
        entry = await self.live.get(bottle_id)
        async with self.live.guard(entry.bottle):
            allow, records = await entry.bottle.egress_log()
        decisions = records.decisions
        first = parse_cursor(cursor, len(decisions), default=len(decisions) - limit)
        shown, next_cursor = page(decisions, first, limit, self._log_budget())
        return EgressLog(
            bottle_id=bottle_id,
            total=len(decisions),
            first=first,
            next_cursor=next_cursor,
            allow=clip_list(allow, 4000, "hosts")[0],
            decisions=shown,
            denied=records.denied,
            dropped=records.dropped,
        )

    def _log_budget(self) -> int:
        """Characters of records a log result may hold: the page budget, within the output cap."""
        return max(min(PAGE_BUDGET, self.output_cap - LOG_RESULT_OVERHEAD), 1024)

    async def gate_log(self, bottle_id: str, *, limit: int = 100, cursor: str | None = None) -> GateLog:
        entry = await self.live.get(bottle_id)
        async with self.live.guard(entry.bottle):
            remotes, ssh_hosts, records = await entry.bottle.gate_log()
        events = records.events
        first = parse_cursor(cursor, len(events), default=len(events) - limit)
        shown, next_cursor = page(events, first, limit, self._log_budget())
        return GateLog(
            bottle_id=bottle_id,
            total=len(events),
            first=first,
            next_cursor=next_cursor,
            git_remotes=remotes,
            ssh_hosts=ssh_hosts,
            events=shown,
            dropped=records.dropped,
        )

    async def list_active(self) -> list[BottleInfo]:
        return await self.keep.annotate(await self.backend.list_active())

    async def cleanup(self, *, dry_run: bool = False) -> CleanupReport:
        plan = await spare_kept(self.backend, await self.backend.prepare_cleanup())
        if dry_run:
            return CleanupReport(dry_run=True, removed=plan.remove, kept=plan.keep, failed=[])
        return await self.backend.cleanup(plan)

    def pool_sizes(self) -> dict[str, int]:
        bottles = self.manifest.manifest.bottles
        if self.config.warm_pool is not None:
            return dict.fromkeys(bottles, self.config.warm_pool)
        return {name: b.warm_pool for name, b in bottles.items()}

    async def keep_warm(self) -> None:
        """Keep the warm pools filled until cancelled (then the backend removes the spares).

        A failing pool must not take the server down: launches are then cold.
        """
        try:
            await self.backend.keep_warm(self.manifest, self.pool_sizes())
        except Exception:
            log.exception("the warm pools stopped; launches are cold from now on")

    @property
    def live_bottles(self) -> list[Bottle]:
        return [e.bottle for e in self.live.all()]

    def owned_ids(self) -> set[str]:
        return {e.id for e in self.live.all()}

    def register_adopted(
        self, bottle: Bottle, plan: BottlePlan, origin: tuple[str, str | None] | None, jobs: list[Job]
    ) -> None:
        """Drive a kept bottle as this server's own (keep.py found it, took its lease and moved its deadline)."""
        entry = self.live.add(bottle, plan)
        if origin is not None:
            entry.origin = RepoOrigin(host_repo=Path(origin[0]), start=origin[1])
        for job in jobs:
            self.live.jobs.adopt(job)

    async def aclose(self) -> None:
        """Keep (keep.py) or remove this server's bottles, in parallel, within the host's shutdown budget."""
        with anyio.CancelScope(shield=True):
            bottles = [e.bottle for e in self.live.all()]
            removing = await self.keep.leave(bottles)
            for b in set(bottles) - set(removing):
                self.live.forget(b.id)
            await self.live.close_all(SHUTDOWN_BUDGET_S * 3)
            with anyio.move_on_after(SHUTDOWN_BUDGET_S):
                async with anyio.create_task_group() as tg:
                    for b in removing:
                        tg.start_soon(self.keep.on_stop, b.id)
            await self.backend.aclose()
        self.closed.set()


async def _repo_origin(bottle: Bottle, plan: BottlePlan) -> RepoOrigin | None:
    """The commit a copy_cwd bottle's repository starts at, read before anything of the agent ran."""
    if plan.copy_cwd is None:
        return None
    res = await bottle.exec(
        f"{GIT} rev-parse --verify --quiet 'HEAD^{{commit}}'", timeout_s=30, workdir=plan.workdir, output_cap=4096
    )
    head = res.stdout.strip()
    start = head if res.exit_code == 0 and OID_RE.match(head) else None
    return RepoOrigin(host_repo=Path(plan.copy_cwd.host_repo), start=start)


def _provisioned(plan: BottlePlan) -> list[str]:
    """What a launch copied or wired into the bottle, in words."""
    provisioned = []
    if plan.prompt:
        provisioned.append(f"prompt -> {plan.prompt.bottle_path}")
    provisioned += [f"skill {s.name} -> {s.bottle_path}" for s in plan.skills]
    if plan.copy_cwd:
        provisioned.append(f"repository {plan.copy_cwd.host_repo} -> {plan.workdir}")
    provisioned += [f"credential {c.name} ({c.in_bottle})" for c in plan.credentials if c.present]
    if plan.gates is not None:
        provisioned += [f"git remote {n} -> {url} (the git gate)" for n, url in plan.gates.git_remotes.items()]
        provisioned += [f"ssh host {alias} -> {how}" for alias, how in plan.gates.ssh_hosts.items()]
    return provisioned
