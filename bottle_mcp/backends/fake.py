"""An in-memory backend for fast tests of everything above the backend.

It honours the same contract as the Docker backend (plans, labels, liveness,
cleanup, timeouts, output caps) but runs nothing: `exec` understands a handful
of shell words (`echo`, `printf`, `cat FILE`, `sleep N`, `exit N`, `yes`) and
copies land in (and come out of) a dict. It never stands in for the engine tests.
"""

from __future__ import annotations

import io
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

import anyio

from .. import labels as L
from ..errors import BottleGoneError, ImageMissingError, PathError, PlanError
from ..manifest import AgentDef, BottleDef
from ..models import (
    BottleInfo,
    BottlePlan,
    BottleSpec,
    CleanupItem,
    CleanupPlan,
    CleanupReport,
    EgressDecision,
    ExecResult,
    GateEvent,
    MountPlan,
    NetworkPlan,
    ResourceKind,
    RuntimePlan,
)
from ..output import safe_text, trim_partial_utf8
from ..planning import BackendPlan, resources
from .base import Backend, Bottle, Progress, _no_progress


@dataclass
class FakeObject:
    kind: ResourceKind
    id: str
    labels: dict[str, str]
    running: bool = True


@dataclass
class FakeWorld:
    """The pretend engine: shared by every FakeBackend given the same world."""

    objects: dict[str, FakeObject] = field(default_factory=dict)
    missing_images: set[str] = field(default_factory=set)
    runtimes: set[str] = field(default_factory=lambda: {"runc"})
    reachable: bool = True


class FakeBottle:
    def __init__(self, world: FakeWorld, info: BottleInfo, container_id: str) -> None:
        self.world = world
        self._info = info
        self.container_id = container_id
        self.files: dict[str, bytes] = {}
        self.exec_log: list[str] = []

    @property
    def id(self) -> str:
        return self._info.bottle_id

    @property
    def info(self) -> BottleInfo:
        return self._info

    async def egress_log(self) -> tuple[list[str], list[EgressDecision]]:
        return [], []  # the fake runs nothing, so nothing leaves it

    async def gate_log(self) -> tuple[dict[str, str], dict[str, str], list[GateEvent]]:
        return {}, {}, []  # the fake has no gate: nothing is pushed anywhere

    def _alive(self) -> None:
        obj = self.world.objects.get(self.container_id)
        if obj is None or not obj.running:
            raise BottleGoneError(self.id, "its container no longer exists")

    async def exec(
        self,
        command: str,
        *,
        timeout_s: float,
        workdir: str | None,
        output_cap: int,
        stdin: bytes | None = None,
    ) -> ExecResult:
        self._alive()
        self.exec_log.append(command)
        started = time.monotonic()
        out, err, code, timed_out = b"", b"", 0, False
        try:
            words = shlex.split(command)
        except ValueError as e:
            words, err, code = [], f"sh: syntax error: {e}\n".encode(), 2
        if words:
            head, args = words[0], words[1:]
            if head == "echo":
                out = (" ".join(args) + "\n").encode()
            elif head == "printf":
                out = (args[0] if args else "").encode().decode("unicode_escape").encode("latin-1")
            elif head == "cat" and args:
                if args[0] in self.files:
                    out = self.files[args[0]]
                else:
                    err, code = f"cat: {args[0]}: No such file or directory\n".encode(), 1
            elif head == "sleep":
                with anyio.move_on_after(timeout_s) as scope:
                    await anyio.sleep(float(args[0]) if args else 0)
                timed_out = scope.cancelled_caught
            elif head == "exit":
                code = int(args[0]) if args else 0
            elif head == "yes":
                out = b"y\n" * (output_cap // 2 + 1024)
            elif head == "pwd":
                out = f"{workdir or '/workspace'}\n".encode()
            else:
                err, code = f"sh: {head}: not found\n".encode(), 127
        stdout, n1 = safe_text(trim_partial_utf8(out[:output_cap]) if len(out) > output_cap else out)
        stderr, n2 = safe_text(trim_partial_utf8(err[:output_cap]) if len(err) > output_cap else err)
        truncated = len(out) > output_cap or len(err) > output_cap
        return ExecResult(
            exit_code=None if timed_out else code,
            stdout=stdout,
            stderr=stderr,
            truncated=truncated,
            stdout_bytes=len(out),
            stderr_bytes=len(err),
            output_cap_bytes=output_cap,
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
            notes=sorted(set(n1 + n2)) + (["output was cut"] if truncated else []),
        )

    async def put_tar(self, tar: IO[bytes], dest_dir: PurePosixPath) -> None:
        self._alive()
        with tarfile.open(fileobj=io.BytesIO(tar.read()), mode="r") as tf:
            for member in tf.getmembers():
                if member.isfile():
                    f = tf.extractfile(member)
                    assert f is not None
                    self.files[str(dest_dir / member.name)] = f.read()

    async def get_tar(self, path: PurePosixPath, *, max_bytes: int) -> bytes:
        self._alive()
        prefix = str(path)
        chosen = {k: v for k, v in self.files.items() if k == prefix or k.startswith(prefix + "/")}
        if not chosen:
            raise PathError(f"{prefix!r} does not exist in bottle {self.id!r}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in sorted(chosen.items()):
                info = tarfile.TarInfo(str(PurePosixPath(path.name) / PurePosixPath(name).relative_to(path)))
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        if buf.tell() > max_bytes:
            raise PathError(f"{prefix!r} is larger than the copy limit of {max_bytes} bytes")
        return buf.getvalue()

    async def aclose(self) -> list[str]:
        removed = []
        for oid in [o.id for o in self.world.objects.values() if o.labels.get(L.BOTTLE) == self.id]:
            kind = self.world.objects.pop(oid).kind
            removed.append(f"{kind} {oid}")
        return removed


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, instance: L.Instance, world: FakeWorld | None = None) -> None:
        super().__init__(instance)
        self.world = world or FakeWorld()

    async def _resolve_plan(self, spec: BottleSpec, agent: AgentDef, bottle: BottleDef) -> BackendPlan:
        image = spec.manifest.image_for(agent.bottle)
        present = image not in self.world.missing_images
        if bottle.runtime == "runsc" and "runsc" not in self.world.runtimes:
            raise PlanError("the manifest asks for runtime = 'runsc' but this engine has no runsc runtime")
        effective = "runsc" if bottle.runtime != "runc" and "runsc" in self.world.runtimes else "runc"
        return BackendPlan(
            image=image,
            image_present=present,
            runtime=RuntimePlan(requested=bottle.runtime, effective=effective, reason="fake engine"),
            read_only_root=bottle.read_only_root,
            mounts=(MountPlan(target=bottle.workdir, kind="volume", read_only=False, purpose="workspace"),),
            network=NetworkPlan(
                mode=bottle.network,
                egress_allow=list(bottle.egress.allow) if bottle.egress else [],
                effective="none",
            ),
            resources=resources(bottle),
            warnings=() if present else (f"image {image!r} is missing",),
        )

    async def launch(self, plan: BottlePlan, spec: BottleSpec, progress: Progress = _no_progress) -> Bottle:
        if plan.image in self.world.missing_images:
            raise ImageMissingError(plan.image, "build it first")
        bottle_id = f"b-{secrets.token_hex(4)}"
        created = L.utc_stamp()
        extra = {L.BOTTLE: bottle_id, L.AGENT: plan.agent, L.BOTTLE_DEF: plan.bottle, L.CREATED: created}
        await progress("creating")
        cid = f"c-{secrets.token_hex(6)}"
        self.world.objects[cid] = FakeObject("container", cid, self.instance.labels("bottle", **extra))
        vid = f"v-{secrets.token_hex(6)}"
        self.world.objects[vid] = FakeObject("volume", vid, self.instance.labels("workspace", **extra))
        info = BottleInfo(
            bottle_id=bottle_id,
            agent=plan.agent,
            bottle=plan.bottle,
            backend=self.name,
            status="running",
            runtime=plan.runtime.effective,
            image=plan.image,
            created_at=created,
            owner="this-server",
            instance=self.instance.id,
        )
        bottle = FakeBottle(self.world, info, cid)
        await progress("ready")
        return bottle

    async def list_active(self) -> list[BottleInfo]:
        out = []
        for o in self.world.objects.values():
            if o.kind == "container" and o.labels.get(L.ROLE) == "bottle":
                lab = o.labels
                out.append(
                    BottleInfo(
                        bottle_id=lab[L.BOTTLE],
                        agent=lab.get(L.AGENT, "?"),
                        bottle=lab.get(L.BOTTLE_DEF, "?"),
                        backend=self.name,
                        status="running" if o.running else "exited",
                        runtime="runc",
                        image="?",
                        created_at=lab.get(L.CREATED, "?"),
                        owner=self.instance.liveness_of(lab),
                        instance=lab.get(L.INSTANCE, "?"),
                    )
                )
        return out

    async def prepare_cleanup(self) -> CleanupPlan:
        items = [
            CleanupItem(
                kind=o.kind,
                id=o.id,
                name=o.id,
                bottle_id=o.labels.get(L.BOTTLE, "?"),
                owner=self.instance.liveness_of(o.labels),
                instance=o.labels.get(L.INSTANCE, "?"),
            )
            for o in self.world.objects.values()
        ]
        return CleanupPlan(
            remove=[i for i in items if i.owner == "orphaned"],
            keep=[i for i in items if i.owner != "orphaned"],
        )

    async def cleanup(self, plan: CleanupPlan) -> CleanupReport:
        for item in plan.remove:
            self.world.objects.pop(item.id, None)
        return CleanupReport(dry_run=False, removed=plan.remove, kept=plan.keep, failed=[])
