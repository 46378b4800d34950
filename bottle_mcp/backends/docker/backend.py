"""The Docker backend: hardened containers on any engine docker-py reaches."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import anyio
import docker
from docker.types import Mount

from ... import credentials
from ... import labels as L
from ...errors import (
    BottleError,
    BottleGoneError,
    EngineError,
    EngineNotFoundError,
    ImageMissingError,
    LaunchError,
    PlanError,
)
from ...manifest import AgentDef, BottleDef, LoadedManifest, format_size, parse_size
from ...models import (
    BottleInfo,
    BottlePlan,
    BottleSpec,
    CleanupFailure,
    CleanupItem,
    CleanupPlan,
    CleanupReport,
    MountPlan,
    ResourceKind,
    RuntimePlan,
)
from ...paths import TarEntry, packed_tar
from ...planning import BackendPlan, find_repo, prompt_text, resources
from ..base import Backend, Bottle, Diagnosis, Progress, _no_progress
from . import disk, egress, gates
from .bottle import DockerBottle
from .channel import Channel
from .diagnose import diagnose
from .engine import Engine, flavour, rootless, selectable_runtimes
from .images import image_fix_hint, image_status
from .keeper import DockerKeeper
from .mould import Mould
from .pool import SPARE_PREFIX, PoolTarget, Spare, Started, WarmPool, pool_key

log = logging.getLogger(__name__)

REMOVE_CONCURRENCY = 16
RUNTIMES_TTL_S = 30.0


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, instance: L.Instance, engine: Engine | None = None, *, gate_network: str | None = None) -> None:
        super().__init__(instance)
        self.engine = engine or Engine()
        # Where git and ssh gates reach their upstreams: a bridge of their own unless the server was told otherwise.
        self.gate_network = gate_network or os.environ.get(gates.GATE_NETWORK_ENV) or None
        self._runtimes_seen: tuple[float, set[str]] | None = None
        self._disk_support: disk.DiskSupport | None = None
        self._disk_lock = anyio.Lock()
        self.pool = WarmPool(lambda cid, bid, user: Channel.open(self.engine, cid, bid, user))
        self.keeper = DockerKeeper(self.engine, instance)  # kept bottles: see keep.py

    async def keep_warm(self, manifest: LoadedManifest, sizes: dict[str, int]) -> None:
        targets: list[PoolTarget] = []
        runtimes: set[str] | None = None
        for name, size in sizes.items():
            if size <= 0:
                continue
            bdef = manifest.manifest.bottles[name]
            if bdef.network != "none":
                # A spare would need its network set up per agent at claim time: launch those cold.
                log.warning("no warm pool for bottle %r: pools serve network = 'none' bottles only", name)
                continue
            image = manifest.image_for(name)
            try:
                await self.engine.call("inspect image", partial(_image_id, image))
                runtimes = runtimes if runtimes is not None else await self._runtimes()
                runtime = self._pick_runtime(bdef, runtimes).effective
            except BottleError as e:
                log.warning("no warm pool for bottle %r: %s", name, e)
                continue
            targets.append(PoolTarget(bottle=name, bdef=bdef, image=image, runtime=runtime, size=size))
        if targets:
            log.info("keeping warm: %s", ", ".join(f"{t.bottle} x{t.size}" for t in targets))
            await self.pool.keep_filled(targets, self.start_container, self._undo)

    # -- prepare -------------------------------------------------------------------

    async def _runtimes(self) -> set[str]:
        # Asked at every prepare and again at every launch (the plan re-check); runtimes are
        # registered by an administrator and change rarely, so a short memory saves a call.
        now = time.monotonic()
        if self._runtimes_seen is None or now - self._runtimes_seen[0] > RUNTIMES_TTL_S:
            info = await self.engine.call("engine info", lambda c: c.info())
            self._runtimes_seen = (now, selectable_runtimes(info, await self.engine.call("engine kind", flavour)))
        return set(self._runtimes_seen[1])

    async def disk_support(self) -> disk.DiskSupport:
        """Whether (and how) this engine enforces disk limits: probed once, then remembered."""
        async with self._disk_lock:
            if self._disk_support is not None:
                return self._disk_support
            support = await disk.probe(self.engine, self.instance)
            if support.mechanism is not None:  # a failure is asked again next time (it may be passing)
                self._disk_support = support
            return support

    async def limits_problem(self) -> str | None:
        """Why this engine cannot hold a bottle to its memory, process and CPU limits, or None."""
        return (await self.engine.call("engine traits", rootless)).limits_problem

    async def _check_limits(self) -> None:
        problem = await self.limits_problem()
        if problem is not None:
            raise LaunchError(
                f"{problem}, and a bottle never runs without them. Use a rootful engine, or a rootless one on a "
                "cgroup v2 host whose memory, pids and cpu controllers are delegated to its user (docs/engines.md)"
            )

    async def _disk_plan(self, bottle: BottleDef) -> tuple[str | None, list[str]]:
        """(mechanism or None, warnings) for the bottle's disk limit."""
        limit = bottle.resources.disk_bytes
        if limit is None:
            return None, [
                "disk = 'unlimited' in the manifest: the bottle can fill the host's disk through its workspace"
            ]
        support = await self.disk_support()
        warnings = []
        if support.mechanism is None:
            warnings.append(
                f"this engine cannot enforce disk = {bottle.resources.disk!r} ({support.reason}); launch refuses "
                "until the manifest says disk = 'unlimited'"
            )
        if not bottle.read_only_root:
            warnings.append(
                "read_only_root = false: the container's writable layer is on the host's disk, where no disk limit "
                "applies; launch refuses unless disk = 'unlimited'"
            )
        return support.mechanism, warnings

    async def _resolve_plan(self, spec: BottleSpec, agent: AgentDef, bottle: BottleDef) -> BackendPlan:
        warnings: list[str] = []
        image = spec.manifest.image_for(agent.bottle)
        status = await self.engine.run(image_status, self.engine, spec.manifest, agent.bottle)
        if not status.present:
            warnings.append(f"image {image!r} is missing: {image_fix_hint(spec.manifest)}")
        elif status.stale:
            warnings.append(
                f"image {image!r} was built from an older version of its build folder; {image_fix_hint(spec.manifest)}"
            )
        runtime = self._pick_runtime(bottle, await self._runtimes())
        if runtime.effective == "runc" and bottle.runtime == "auto":
            warnings.append("gVisor (runsc) is not installed on this engine: the bottle shares the host kernel")
        network = egress.network_plan(bottle)
        warnings += egress.plan_warnings(bottle, agent.credentials)
        if network.effective == "egress-proxy":
            warnings += await self._sidecar_image_warning(egress.EGRESS_IMAGE, "the egress proxy image")
        gates.validate(spec.manifest, bottle, agent.bottle)
        warnings += gates.plan_warnings(bottle)
        if gates.needed(bottle):
            warnings += await self._sidecar_image_warning(gates.GATE_IMAGE, "the git gate image")
        if not bottle.read_only_root:
            warnings.append("read_only_root = false in the manifest: the agent can modify the image's files")
        disk_mechanism, disk_warnings = await self._disk_plan(bottle)
        warnings += disk_warnings
        limits_problem = await self.limits_problem()
        if limits_problem is not None:
            warnings.append(f"{limits_problem}; launch refuses: a bottle always runs within its limits")
        limit = bottle.resources.disk_bytes
        return BackendPlan(
            image=image,
            image_present=status.present,
            runtime=runtime,
            read_only_root=bottle.read_only_root,
            mounts=_mounts(bottle),
            network=network,
            resources=resources(bottle).model_copy(
                update={
                    "disk": "unlimited" if limit is None else format_size(limit),
                    "disk_enforced_by": disk_mechanism,
                }
            ),
            gates=gates.gate_plan(bottle),
            warnings=tuple(warnings),
        )

    async def _sidecar_image_warning(self, image: str, what: str) -> list[str]:
        try:
            await self.engine.call(f"inspect {what}", partial(_image_id, image))
        except EngineNotFoundError:
            return [
                f"{what} {image!r} is missing: build it with `bottle-mcp images` (or run scripts/setup.sh); "
                "launch fails until then"
            ]
        return []

    @staticmethod
    def _pick_runtime(bottle: BottleDef, runtimes: set[str]) -> RuntimePlan:
        if bottle.runtime == "runsc":
            if "runsc" not in runtimes:
                raise PlanError(
                    "the manifest asks for runtime = 'runsc' but this engine has no runsc runtime "
                    f"(it has: {', '.join(sorted(runtimes))}); install gVisor and register it, "
                    "or set runtime = 'auto'"
                )
            return RuntimePlan(requested="runsc", effective="runsc", reason="required by the manifest")
        if bottle.runtime == "runc":
            return RuntimePlan(requested="runc", effective="runc", reason="required by the manifest")
        if "runsc" in runtimes:
            return RuntimePlan(requested="auto", effective="runsc", reason="gVisor is registered with the engine")
        return RuntimePlan(requested="auto", effective="runc", reason="the engine has no runsc runtime")

    # -- launch --------------------------------------------------------------------

    async def launch(self, plan: BottlePlan, spec: BottleSpec, progress: Progress = _no_progress) -> Bottle:
        bdef = spec.manifest.manifest.bottles[plan.bottle]
        started = time.monotonic()
        env = {"BOTTLE_AGENT": plan.agent}
        # Stand-ins made now, for this bottle only; the real values go to the proxy alone.
        cred_env, substitutions = credentials.bottle_values(plan.credentials, os.environ)
        env.update(cred_env)
        sidecars = plan.network.effective == "egress-proxy" or gates.needed(bdef)
        # Spares have no sidecars: bottles with egress or gates always launch cold.
        spare = None if sidecars else self.pool.claim(pool_key(plan.bottle, bdef, plan.image, plan.runtime.effective))
        if spare is not None:
            await progress("claiming a warm bottle")
            handle = await self._adopt(spare, plan, bdef, env)
            if handle is not None:
                return await self._finish_launch(handle, plan, spec, progress, started)
        handle, ca_pem = await self._create_cold(plan, spec, bdef, env, progress, substitutions)
        try:
            await progress("starting the exec channel and provisioning")
            # The supervisor starts while the files go in through an engine exec of their own.
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(handle.start_channel, wait=False))
                tg.start_soon(partial(self._provision, handle, plan, spec, via_engine=True))
            if ca_pem is not None:
                res = await handle.exec(
                    egress.INSTALL_CA, timeout_s=30, workdir=None, output_cap=4096, stdin=ca_pem.encode()
                )
                _check_ca_installed(res.exit_code, res.stderr)
            if handle.gate is not None:
                await self._provision_gates(handle, bdef, plan)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await handle.aclose()
            raise self._launch_failure(plan, exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc) from exc
        return await self._finish_launch(handle, plan, spec, progress, started, provisioned=True)

    async def _create_cold(
        self,
        plan: BottlePlan,
        spec: BottleSpec,
        bdef: BottleDef,
        env: dict[str, str],
        progress: Progress,
        substitutions: list[credentials.Substitution],
    ) -> tuple[DockerBottle, str | None]:
        """Sidecars, then the bottle, then their forwarders; the handle and the egress CA (PEM), if any.

        On any failure everything created here is removed before the error is raised.
        """
        # The plan was re-made just before launch (the service checks it is still current),
        # so its word on the image is fresh.
        if not plan.image_present:
            raise ImageMissingError(plan.image, image_fix_hint(spec.manifest))
        bottle_id = f"b-{secrets.token_hex(4)}"
        name = f"bottle-mcp-{plan.agent}-{bottle_id}"
        extra = {L.AGENT: plan.agent, L.PLAN: plan.plan_id}
        # Sidecars carry the same labels as the bottle they serve.
        sidecar_labels = {
            L.BOTTLE: bottle_id,
            L.BOTTLE_DEF: plan.bottle,
            L.RUNTIME: plan.runtime.effective,
            L.CREATED: L.utc_stamp(),
            **extra,
        }
        await self._check_disk(bdef)
        await self._check_limits()  # before any sidecar: none of them may run without its limits either
        sides: list[egress.EgressStack | gates.GateStack] = []
        made: Started | None = None
        ca_pem: str | None = None
        try:
            stack, gate = await self._start_sidecars(
                plan, spec, bdef, name, sidecar_labels, env, sides, progress, substitutions
            )
            await progress("creating and starting the container")
            made = await self.start_container(
                bottle_id, name, plan.bottle, bdef, plan.image, plan.runtime.effective, {**env}, extra
            )
            if stack is not None:
                await stack.start_forwarder(made.container_id)
                ca_pem = await stack.wait_ready()  # the proxy boots while the bottle starts
            if gate is not None:
                await gate.start_forwarder(made.container_id)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                for side in sides:
                    with contextlib.suppress(EngineError):
                        await side.remove()
                if made is not None:
                    await self._undo(made.container_id, made.volume)
            raise self._launch_failure(plan, exc) from exc
        info = self._info(bottle_id, plan.agent, plan.bottle, plan.runtime.effective, plan.image, made.created)
        handle = DockerBottle(
            self.engine,
            container_id=made.container_id,
            volume=made.volume,
            info=info,
            user=bdef.user,
            egress=stack,
            gate=gate,
            env=env,
        )
        return handle, ca_pem

    async def _start_sidecars(
        self,
        plan: BottlePlan,
        spec: BottleSpec,
        bdef: BottleDef,
        name: str,
        labels: dict[str, str],
        env: dict[str, str],
        sides: list[egress.EgressStack | gates.GateStack],
        progress: Progress,
        substitutions: list[credentials.Substitution],
    ) -> tuple[egress.EgressStack | None, gates.GateStack | None]:
        """Start the egress proxy and the gate the plan needs; each joins `sides` before it starts.

        The proxy gets the real values of the credentials the bottle holds stand-ins for.
        """
        forwarded = spec.manifest.manifest.agents[plan.agent].credentials
        stack: egress.EgressStack | None = None
        gate: gates.GateStack | None = None
        if plan.network.effective == "egress-proxy":
            await progress("starting the egress proxy")
            stack = egress.EgressStack(self.engine, self.instance, name, labels)
            sides.append(stack)
            await stack.start_proxy(spec.manifest, bdef, forwarded, substitutions)
            env.update(egress.bottle_env(bdef.home))
        if gates.needed(bdef):
            await progress("starting the git/ssh gate (mirroring the upstreams)")
            gate = gates.GateStack(self.engine, self.instance, name, labels, labels[L.BOTTLE], self.gate_network)
            sides.append(gate)
            await gate.start(spec.manifest, bdef, forwarded)
        return stack, gate

    async def _check_disk(self, bdef: BottleDef) -> None:
        """Refuse a bottle whose disk limit this engine cannot enforce."""
        if bdef.resources.disk_bytes is None:
            return
        if not bdef.read_only_root:
            raise LaunchError(
                "read_only_root = false puts the container's writable layer on the host's disk, where the disk limit "
                f"{bdef.resources.disk!r} cannot apply; keep the root read-only or set disk = 'unlimited'"
            )
        support = await self.disk_support()
        if support.mechanism is None:
            raise LaunchError(
                f"this engine cannot enforce disk = {bdef.resources.disk!r}: {support.reason}. Fix that, or set "
                "disk = 'unlimited' under [bottles.NAME.resources] to run without a disk limit"
            )

    async def _adopt(self, spare: Spare, plan: BottlePlan, bdef: BottleDef, env: dict[str, str]) -> DockerBottle | None:
        """Make a claimed spare this plan's bottle (renamed for its agent); None when the spare is unusable."""
        name = f"bottle-mcp-{plan.agent}-{spare.bottle_id}"
        info = self._info(spare.bottle_id, plan.agent, plan.bottle, plan.runtime.effective, plan.image, spare.created)
        handle = DockerBottle(
            self.engine, container_id=spare.container_id, volume=spare.volume, info=info, user=bdef.user, env=env
        )
        handle.adopt_channel(spare.channel)
        try:
            await self.engine.call("claim a warm bottle", lambda c: c.api.rename(spare.container_id, name))
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await handle.aclose()
            if not isinstance(exc, EngineError):
                raise
            log.warning("a warm bottle could not be claimed (%s); launching cold", exc)
            return None
        return handle

    async def _finish_launch(
        self,
        handle: DockerBottle,
        plan: BottlePlan,
        spec: BottleSpec,
        progress: Progress,
        started: float,
        *,
        provisioned: bool = False,
    ) -> Bottle:
        try:
            if not provisioned:
                await progress("provisioning prompt, skills and files")
                await self._provision(handle, plan, spec)
            await progress(f"ready in {int((time.monotonic() - started) * 1000)} ms")
            return handle
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await handle.aclose()
            raise self._launch_failure(plan, exc) from exc

    @staticmethod
    def _launch_failure(plan: BottlePlan, exc: BaseException) -> BaseException:
        if isinstance(exc, BottleError | anyio.get_cancelled_exc_class()):
            if isinstance(exc, EngineError | BottleGoneError) and not isinstance(exc, LaunchError):
                return LaunchError(f"launch of {plan.agent!r} failed and was rolled back: {exc}")
            return exc
        if not isinstance(exc, Exception):
            return exc
        return LaunchError(f"launch of {plan.agent!r} failed and was rolled back: {exc!r}")

    def _info(self, bottle_id: str, agent: str, bottle: str, runtime: str, image: str, created: str) -> BottleInfo:
        return BottleInfo(
            bottle_id=bottle_id,
            agent=agent,
            bottle=bottle,
            backend=self.name,
            status="running",
            runtime=runtime,
            image=image,
            created_at=created,
            owner="this-server",
            instance=self.instance.id,
        )

    async def start_container(
        self,
        bottle_id: str,
        name: str,
        bottle: str,
        bdef: BottleDef,
        image: str,
        runtime: str,
        env: dict[str, str],
        extra_labels: dict[str, str],
    ) -> Started:
        """Create the workspace volume and the hardened container, and start it; undo both on any failure."""
        created = L.utc_stamp()
        volume = f"{name}-work"
        labels = {
            L.BOTTLE: bottle_id,
            L.BOTTLE_DEF: bottle,
            L.RUNTIME: runtime,
            L.CREATED: created,
            **extra_labels,
        }
        container_id: str | None = None
        full_env = {
            **bdef.env,
            "HOME": bdef.home,
            "USER": "bottle",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "BOTTLE_ID": bottle_id,
            **env,
        }
        helper: str | None = None
        await self._check_limits()
        try:
            limit = bdef.resources.disk_bytes
            if limit is not None:
                await self._check_disk(bdef)
                uid, _, gid = bdef.user.partition(":")
                helper = await disk.create_workspace(
                    self.engine,
                    name=name,
                    work_volume=volume,
                    size=limit,
                    uid=uid,
                    gid=gid or uid,
                    volume_labels=self.instance.labels("workspace", **labels),
                    helper_labels=self.instance.labels("sidecar", **labels),
                )
            # Without a limit the engine creates the workspace volume with the container, labelled through the mount.
            mould = self._mould(image, runtime, bdef, name, volume, full_env, labels)
            container_id = await self.engine.call("create container", mould.create)
            await self.engine.call("start container", lambda c: c.api.start(container_id))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.engine.remove_containers([("disk helper", helper)])
                await self._undo(container_id, volume)
            raise
        # The started bottle's mount now holds the loop device: the helper's hold is no longer needed.
        with anyio.CancelScope(shield=True):
            await self.engine.remove_containers([("disk helper", helper)])
        return Started(container_id=container_id, volume=volume, created=created)

    def _mould(
        self,
        image: str,
        runtime: str,
        bdef: BottleDef,
        name: str,
        volume: str,
        env: dict[str, str],
        labels: dict[str, str],
    ) -> Mould:
        res = bdef.resources
        uid, _, gid = bdef.user.partition(":")
        gid = gid or uid
        return Mould(
            image=image,
            command=["sleep", "infinity"],
            name=name,
            hostname=name[-24:],
            user=bdef.user,
            working_dir=bdef.workdir,
            environment=env,
            labels=self.instance.labels("bottle", **labels),
            network_mode="none",
            runtime=runtime,
            read_only=bdef.read_only_root,
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,size={parse_size(res.tmp_size)}",
                bdef.home: f"rw,nosuid,nodev,size={parse_size(res.home_size)},uid={uid},gid={gid},mode=0700",
            },
            # The engine creates the workspace volume with the container, labelled through the mount.
            mounts=(
                Mount(
                    target=bdef.workdir,
                    source=volume,
                    type="volume",
                    labels=self.instance.labels("workspace", **labels),
                ),
            ),
            pids=res.pids,
            memory=res.memory_bytes,
            nano_cpus=int(res.cpus * 1e9),
            # Any process in the bottle can write to PID 1's output, which the engine keeps on the host's disk.
            log_max_size=disk.BOTTLE_LOG_MAX_SIZE,
        )

    async def _provision(
        self, handle: DockerBottle, plan: BottlePlan, spec: BottleSpec, *, via_engine: bool = False
    ) -> None:
        entries: list[TarEntry] = []
        home = plan.home.lstrip("/")
        text = prompt_text(spec)
        if text is not None:
            entries.append(TarEntry(arcname=f"{home}/.bottle-mcp/prompt.md", data=text.encode()))
        skills_dir = spec.manifest.skills_dir().resolve()
        for s in plan.skills:
            entries.append(
                TarEntry(arcname=f"{home}/.claude/skills/{s.name}", source=skills_dir / s.name, root=skills_dir)
            )
        if plan.copy_cwd is not None:
            repo = find_repo(spec.cwd)
            entries.append(
                TarEntry(arcname=f"{plan.workdir.lstrip('/')}/.git", source=repo / ".git", root=repo / ".git")
            )
        if not entries:
            return
        tar, _stats = await self.engine.run(packed_tar, entries)
        with tar:
            await handle.put_tar(tar, PurePosixPath("/"), via_engine=via_engine)
        if plan.copy_cwd is not None:
            res = await handle.exec(
                "git -c safe.directory='*' reset -q --hard",
                timeout_s=120,
                workdir=plan.workdir,
                output_cap=65536,
            )
            if res.exit_code != 0:
                raise LaunchError(f"checking out the copied repository failed in the bottle: {res.stderr[:500]}")

    async def _provision_gates(self, handle: DockerBottle, bdef: BottleDef, plan: BottlePlan) -> None:
        """The bottle's git remotes and ssh hosts lead to the gate; start the ssh agent relay."""
        home = bdef.home.lstrip("/")
        files = gates.bottle_files(bdef)
        entries = [TarEntry(arcname=f"{home}/{rel}", data=text.encode()) for rel, text in files.items()]
        tar, _stats = await self.engine.run(packed_tar, entries)
        with tar:
            await handle.put_tar(tar, PurePosixPath("/"))
        if plan.copy_cwd is not None and bdef.git:
            # A copied repository's own remote of the same name would add a second URL to the gate's.
            names = " ".join(g.name for g in bdef.git)
            await handle.exec(
                f"for r in {names}; do git config --remove-section remote.$r 2>/dev/null; done; true",
                timeout_s=30,
                workdir=plan.workdir,
                output_cap=4096,
            )
        command = gates.relay_command(bdef)
        if command is not None:
            res = await handle.exec(command, timeout_s=30, workdir=None, output_cap=4096)
            if res.exit_code != 0:
                raise LaunchError(f"starting the ssh agent relay in the bottle failed: {res.stderr.strip()[:300]}")

    async def _undo(self, container_id: str | None, volume: str | None) -> None:
        if container_id is not None:
            with contextlib.suppress(EngineError):
                await self.engine.remove_resource("container", container_id)
        if volume is not None:
            with contextlib.suppress(EngineError):
                await disk.remove_volumes(self.engine, volume)

    # -- listing and cleanup ----------------------------------------------------------

    async def list_active(self) -> list[BottleInfo]:
        rows = await self.engine.call(
            "list bottles",
            lambda c: c.api.containers(all=True, filters={"label": [f"{L.MANAGED}=true", f"{L.ROLE}=bottle"]}),
        )
        return [self._info_from_row(r) for r in rows if not _name(r).startswith(SPARE_PREFIX)]

    def _info_from_row(self, row: dict[str, Any]) -> BottleInfo:
        lab: dict[str, str] = row.get("Labels") or {}
        agent = lab.get(L.AGENT, "?")
        if L.POOL in lab and L.AGENT not in lab:
            # Born in a warm pool: the agent's name went into the container's name when it was claimed.
            agent = _name(row).removeprefix("bottle-mcp-").removesuffix(f"-{lab.get(L.BOTTLE, '')}") or "?"
        return BottleInfo(
            bottle_id=lab.get(L.BOTTLE, "?"),
            agent=agent,
            bottle=lab.get(L.BOTTLE_DEF, "?"),
            backend=self.name,
            status=str(row.get("State", "unknown")),
            runtime=lab.get(L.RUNTIME, "?"),
            image=str(row.get("Image", "?")),
            created_at=lab.get(L.CREATED, "?"),
            owner=self.instance.liveness_of(lab),
            instance=lab.get(L.INSTANCE, "?"),
        )

    async def prepare_cleanup(self) -> CleanupPlan:
        flt = {"label": [f"{L.MANAGED}=true"]}

        def scan(c: docker.DockerClient) -> list[CleanupItem]:
            items: list[CleanupItem] = []
            for row in c.api.containers(all=True, filters=flt):
                items.append(self._item("container", row["Id"], row["Names"][0].lstrip("/"), row.get("Labels")))
            for vol in c.api.volumes(filters=flt).get("Volumes") or []:
                items.append(self._item("volume", vol["Name"], vol["Name"], vol.get("Labels")))
            for net in c.api.networks(filters=flt):
                items.append(self._item("network", net["Id"], net["Name"], net.get("Labels")))
            return items

        items = await self.engine.call("scan for leftovers", scan)
        remove = [i for i in items if i.owner == "orphaned"]
        keep = [i for i in items if i.owner != "orphaned"]
        return CleanupPlan(remove=remove, keep=keep)

    def _item(self, kind: ResourceKind, id_: str, name: str, labels: dict[str, str] | None) -> CleanupItem:
        lab = labels or {}
        return CleanupItem(
            kind=kind,
            id=id_,
            name=name,
            bottle_id=lab.get(L.BOTTLE, "?"),
            owner=self.instance.liveness_of(lab),
            instance=lab.get(L.INSTANCE, "?"),
        )

    async def cleanup(self, plan: CleanupPlan) -> CleanupReport:
        removed: list[CleanupItem] = []
        failed: list[CleanupFailure] = []
        limiter = anyio.CapacityLimiter(REMOVE_CONCURRENCY)

        async def remove(item: CleanupItem) -> None:
            async with limiter:
                try:
                    await self.engine.remove_resource(item.kind, item.id)
                    removed.append(item)  # removed now, or already gone
                except EngineError as e:
                    failed.append(CleanupFailure(item=item, error=str(e)))

        # Containers first: volumes and networks cannot go while a container uses them.
        for kind in ("container", "volume", "network"):
            async with anyio.create_task_group() as tg:
                for item in plan.remove:
                    if item.kind == kind:
                        tg.start_soon(remove, item)
        return CleanupReport(dry_run=False, removed=removed, kept=plan.keep, failed=failed)

    async def offload(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Through the engine's limiter, like every other worker thread of this backend.
        return await self.engine.run(partial(fn, *args, **kwargs))

    async def diagnose(self, manifest: LoadedManifest | None, environ: Mapping[str, str]) -> list[Diagnosis]:
        found = await diagnose(self.engine, manifest, environ)
        if any(d.name == "engine" and d.status == "fail" for d in found):
            return [*found, Diagnosis("disk limit", "skip", "skipped: no engine answers")]
        limits = await self.limits_problem()
        found.append(
            Diagnosis("limits", "ok", "the engine applies a bottle's memory, process and CPU limits")
            if limits is None
            else Diagnosis(
                "limits",
                "fail",
                f"{limits}: no bottle can launch",
                "use a rootful engine, or a rootless one on a cgroup v2 host whose memory, pids and cpu controllers "
                "are delegated to its user (docs/engines.md)",
            )
        )
        return [*found, disk.diagnosis(await self.disk_support(), manifest)]

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.pool.drain(self._undo)
        self.engine.close()


def _image_id(image: str, c: docker.DockerClient) -> str:
    return str(c.images.get(image).id)


def _name(row: dict[str, Any]) -> str:
    names = row.get("Names") or ["/?"]
    return str(names[0]).lstrip("/")


def _mounts(bottle: BottleDef) -> tuple[MountPlan, ...]:
    res = bottle.resources
    return (
        MountPlan(
            target="/tmp",
            kind="tmpfs",
            read_only=False,
            size=format_size(parse_size(res.tmp_size)),
            purpose="scratch space",
        ),
        MountPlan(
            target=bottle.home,
            kind="tmpfs",
            read_only=False,
            size=format_size(parse_size(res.home_size)),
            purpose="the user's home (prompt, skills, tools)",
        ),
        MountPlan(
            target=bottle.workdir,
            kind="volume",
            read_only=False,
            size=None if res.disk_bytes is None else format_size(res.disk_bytes),
            purpose="workspace volume, removed with the bottle"
            + ("" if res.disk_bytes is None else "; a file system of its own size (the disk limit)"),
        ),
    )


def _check_ca_installed(exit_code: int | None, stderr: str) -> None:
    if exit_code != 0:
        raise LaunchError(f"installing the egress proxy's CA in the bottle failed: {stderr[:300]}")
