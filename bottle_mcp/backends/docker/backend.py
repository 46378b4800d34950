"""The Docker backend: hardened containers on any engine docker-py reaches."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from datetime import UTC, datetime
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
from ...images import image_fix_hint, image_status
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
    ResourcePlan,
    RuntimePlan,
)
from ...paths import TarEntry, pack_tar
from ..base import Backend, Bottle, Progress, _no_progress, find_repo, prompt_text
from . import egress, gates
from .bottle import DockerBottle
from .channel import Channel
from .engine import Engine
from .pool import SPARE_PREFIX, PoolTarget, Spare, Started, WarmPool, pool_key

log = logging.getLogger(__name__)

REMOVE_CONCURRENCY = 16
RUNTIMES_TTL_S = 30.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, instance: L.Instance, engine: Engine | None = None, *, gate_network: str | None = None) -> None:
        super().__init__(instance)
        self.engine = engine or Engine()
        # Where git and ssh gates reach their upstreams: a bridge of their own unless the server was told otherwise.
        self.gate_network = gate_network or os.environ.get(gates.GATE_NETWORK_ENV) or None
        self._runtimes_seen: tuple[float, set[str]] | None = None
        self.pool = WarmPool(lambda cid, bid, user: Channel.open(self.engine, cid, bid, user))

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
            self._runtimes_seen = (now, set((info.get("Runtimes") or {}).keys()))
        return set(self._runtimes_seen[1])

    async def _resolve_plan(
        self, spec: BottleSpec, agent: AgentDef, bottle: BottleDef, common: dict[str, object]
    ) -> dict[str, object]:
        warnings = list(common.pop("warnings", []))  # type: ignore[call-overload]
        image = spec.manifest.image_for(agent.bottle)
        status = await self.engine.run(image_status, self.engine, spec.manifest, agent.bottle)
        if not status.present:
            warnings.append(f"image {image!r} is missing: {image_fix_hint(spec.manifest)}")
        elif status.stale:
            warnings.append(
                f"image {image!r} was built from an older version of its build folder; {image_fix_hint(spec.manifest)}"
            )
        runtimes = await self._runtimes()
        runtime = self._pick_runtime(bottle, runtimes)
        if runtime.effective == "runc" and bottle.runtime == "auto":
            warnings.append("gVisor (runsc) is not installed on this engine: the bottle shares the host kernel")
        res = bottle.resources
        network = egress.network_plan(bottle)
        warnings += egress.plan_warnings(bottle, agent.credentials)
        if network.effective == "egress-proxy":
            try:
                await self.engine.call("inspect egress image", lambda c: c.images.get(egress.EGRESS_IMAGE).id)
            except EngineNotFoundError:
                warnings.append(
                    f"the egress proxy image {egress.EGRESS_IMAGE!r} is missing: build it with `bottle-mcp images` "
                    "(or run scripts/setup.sh); launch fails until then"
                )
        gates.validate(spec.manifest, bottle, agent.bottle)
        warnings += gates.plan_warnings(bottle)
        if gates.needed(bottle):
            try:
                await self.engine.call("inspect gate image", lambda c: c.images.get(gates.GATE_IMAGE).id)
            except EngineNotFoundError:
                warnings.append(
                    f"the git gate image {gates.GATE_IMAGE!r} is missing: build it with `bottle-mcp images` "
                    "(or run scripts/setup.sh); launch fails until then"
                )
        if not bottle.read_only_root:
            warnings.append("read_only_root = false in the manifest: the agent can modify the image's files")
        return {
            "gates": gates.gate_plan(bottle),
            **common,
            "warnings": warnings,
            "image": image,
            "image_present": status.present,
            "runtime": runtime,
            "capabilities_dropped": ["ALL"],
            "capabilities_added": [],
            "no_new_privileges": True,
            "seccomp": "engine default profile",
            "read_only_root": bottle.read_only_root,
            "init": True,
            "mounts": [
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
                    size=None,
                    purpose="workspace volume, removed with the bottle",
                ),
            ],
            "host_mounts": [],
            "network": network,
            "resources": ResourcePlan(
                cpus=res.cpus,
                memory=format_size(res.memory_bytes),
                memory_bytes=res.memory_bytes,
                pids=res.pids,
                tmp_size=format_size(parse_size(res.tmp_size)),
                home_size=format_size(parse_size(res.home_size)),
            ),
        }

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
        agent = spec.manifest.manifest.agents[plan.agent]
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
        bottle_id = f"b-{secrets.token_hex(4)}"
        name = f"bottle-mcp-{plan.agent}-{bottle_id}"
        extra = {L.AGENT: plan.agent, L.PLAN: plan.plan_id}
        # Sidecars carry the same labels as the bottle they serve.
        sidecar_labels = {
            L.BOTTLE: bottle_id,
            L.BOTTLE_DEF: plan.bottle,
            L.RUNTIME: plan.runtime.effective,
            L.CREATED: _now(),
            **extra,
        }
        # The plan was re-made just before launch (the service checks it is still current),
        # so its word on the image is fresh.
        if not plan.image_present:
            raise ImageMissingError(plan.image, image_fix_hint(spec.manifest))
        stack: egress.EgressStack | None = None
        gate: gates.GateStack | None = None
        made: Started | None = None
        ca_pem: str | None = None
        try:
            if plan.network.effective == "egress-proxy":
                await progress("starting the egress proxy")
                stack = egress.EgressStack(self.engine, self.instance, name, sidecar_labels)
                await stack.start_proxy(spec.manifest, bdef, agent.credentials, substitutions)
                env.update(egress.bottle_env(bdef.home))
            if gates.needed(bdef):
                await progress("starting the git/ssh gate (mirroring the upstreams)")
                gate = gates.GateStack(self.engine, self.instance, name, sidecar_labels, bottle_id, self.gate_network)
                await gate.start(spec.manifest, bdef, agent.credentials)
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
                for side in (stack, gate):
                    if side is not None:
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
            if gate is not None:
                await self._provision_gates(handle, bdef, plan)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await handle.close()
            raise self._launch_failure(plan, exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc) from exc
        return await self._finish_launch(handle, plan, spec, progress, started, provisioned=True)

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
                await handle.close()
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
                await handle.close()
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
        created = _now()
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
        try:
            # The engine creates the workspace volume with the container, labelled through the mount.
            container_id = await self.engine.call(
                "create container",
                lambda c: self._create(c, image, runtime, bdef, name, volume, full_env, labels),
            )
            await self.engine.call("start container", lambda c: c.api.start(container_id))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo(container_id, volume)
            raise
        return Started(container_id=container_id, volume=volume, created=created)

    def _create(
        self,
        c: docker.DockerClient,
        image: str,
        runtime: str,
        bdef: BottleDef,
        name: str,
        volume: str,
        env: dict[str, str],
        labels: dict[str, str],
    ) -> str:
        res = bdef.resources
        uid, _, gid = bdef.user.partition(":")
        gid = gid or uid
        host_config = c.api.create_host_config(
            init=True,
            read_only=bdef.read_only_root,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,size={parse_size(res.tmp_size)}",
                bdef.home: f"rw,nosuid,nodev,size={parse_size(res.home_size)},uid={uid},gid={gid},mode=0700",
            },
            mounts=[
                Mount(
                    target=bdef.workdir,
                    source=volume,
                    type="volume",
                    labels=self.instance.labels("workspace", **labels),
                )
            ],
            network_mode="none",
            pids_limit=res.pids,
            mem_limit=res.memory_bytes,
            memswap_limit=res.memory_bytes,
            nano_cpus=int(res.cpus * 1e9),
            ipc_mode="private",
            cgroupns="private",
            runtime=runtime,
        )
        created = c.api.create_container(
            image=image,
            command=["sleep", "infinity"],
            name=name,
            hostname=name[-24:],
            user=bdef.user,
            working_dir=bdef.workdir,
            environment=env,
            labels=self.instance.labels("bottle", **labels),
            host_config=host_config,
            network_disabled=False,
        )
        return str(created["Id"])

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
        with pack_tar(entries) as (tar, _stats):
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
        with pack_tar(entries) as (tar, _stats):
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
                await self.engine.call("remove container", lambda c: c.api.remove_container(container_id, force=True))
        if volume is not None:
            with contextlib.suppress(EngineError):
                await self.engine.call("remove volume", lambda c: c.api.remove_volume(volume, force=True))

    async def check_alive(self, bottle: Bottle) -> None:
        assert isinstance(bottle, DockerBottle)
        await bottle.check_alive()

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
                    attempts = 1 if item.kind == "container" else 10
                    await self.engine.remove(f"remove {item.kind}", lambda c: _remove(c, item), attempts=attempts)
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

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.pool.drain(self._undo)
        self.engine.close()


def _image_id(image: str, c: docker.DockerClient) -> str:
    return str(c.images.get(image).id)


def _name(row: dict[str, Any]) -> str:
    names = row.get("Names") or ["/?"]
    return str(names[0]).lstrip("/")


def _remove(c: docker.DockerClient, item: CleanupItem) -> None:
    if item.kind == "container":
        c.api.remove_container(item.id, force=True)
    elif item.kind == "volume":
        c.api.remove_volume(item.id, force=True)
    else:
        c.api.remove_network(item.id)


def _check_ca_installed(exit_code: int | None, stderr: str) -> None:
    if exit_code != 0:
        raise LaunchError(f"installing the egress proxy's CA in the bottle failed: {stderr[:300]}")
