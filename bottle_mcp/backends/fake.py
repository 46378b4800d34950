"""An in-memory backend for fast tests of everything above the backend.

It honours the same contract as the Docker backend (plans, labels, liveness,
cleanup, timeouts, output caps) but runs nothing: `exec` understands a handful
of shell words (`echo`, `printf`, `cat FILE`, `head -c N /dev/zero`, `sleep N`, `exit N`, `yes`,
a trailing `>&2`), plays the output-keeping wrapper of shaping.py, and
copies land in (and come out of) a dict. It never stands in for the engine tests.
"""

from __future__ import annotations

import base64
import io
import secrets
import shlex
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, TypeVar

import anyio
import anyio.to_thread

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
    EgressRecords,
    ExecResult,
    GateRecords,
    MountPlan,
    NetworkPlan,
    ResourceKind,
    RuntimePlan,
)
from ..output import safe_text, trim_partial_utf8
from ..planning import BackendPlan, resources
from .base import Backend, Bottle, Progress, _no_progress

T = TypeVar("T")


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

    async def egress_log(self) -> tuple[list[str], EgressRecords]:
        return [], EgressRecords([])  # the fake runs nothing, so nothing leaves it

    async def gate_log(self) -> tuple[dict[str, str], dict[str, str], GateRecords]:
        return {}, {}, GateRecords([])  # the fake has no gate: nothing is pushed anywhere

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
        saved = await self._saved_exec(command, timeout_s=timeout_s, workdir=workdir)
        if saved is not None:
            out, err, code, timed_out = saved
        else:
            out, err, code, timed_out = await self._interpret(command, timeout_s=timeout_s, workdir=workdir)
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

    async def _interpret(
        self, command: str, *, timeout_s: float, workdir: str | None
    ) -> tuple[bytes, bytes, int, bool]:
        """The few shell words the fake understands; a trailing `>&2` sends stdout to stderr."""
        try:
            words = shlex.split(command)
        except ValueError as e:
            return b"", f"sh: syntax error: {e}\n".encode(), 2, False
        to_stderr = bool(words) and words[-1] == ">&2"
        if to_stderr:
            words = words[:-1]
        out, err, code, timed_out = b"", b"", 0, False
        if words and words[0] == "sleep":
            with anyio.move_on_after(timeout_s) as scope:
                await anyio.sleep(float(words[1]) if len(words) > 1 else 0)
            timed_out = scope.cancelled_caught
        elif words:
            out, err, code = self._word(words[0], words[1:], workdir)
        if to_stderr:
            out, err = b"", err + out
        return out, err, code, timed_out

    def _word(self, head: str, args: list[str], workdir: str | None) -> tuple[bytes, bytes, int]:
        """stdout, stderr and exit status of one of the fake's commands (all but sleep)."""
        if head == "echo":
            return (" ".join(args) + "\n").encode(), b"", 0
        if head == "printf":
            return (args[0] if args else "").encode().decode("unicode_escape").encode("latin-1"), b"", 0
        if head == "cat" and args:
            if args[0] in self.files:
                return self.files[args[0]], b"", 0
            return b"", f"cat: {args[0]}: No such file or directory\n".encode(), 1
        if head == "head" and len(args) == 3 and args[0] == "-c" and args[1].isdigit():
            return self._head_c(int(args[1]), args[2]), b"", 0
        if head == "exit":
            return b"", b"", int(args[0]) if args else 0
        if head == "yes":
            return b"y\n" * (32 * 1024), b"", 0
        if head == "pwd":
            return f"{workdir or '/workspace'}\n".encode(), b"", 0
        return b"", f"sh: {head}: not found\n".encode(), 127

    def _head_c(self, n: int, source: str) -> bytes:
        if source == "/dev/zero":
            return bytes(n)
        if source == "/dev/urandom":
            return (secrets.token_bytes(min(n, 4096)) * (n // 4096 + 1))[:n]
        return self.files.get(source, b"")[:n]

    async def _saved_exec(
        self, command: str, *, timeout_s: float, workdir: str | None
    ) -> tuple[bytes, bytes, int, bool] | None:
        """Play the output-keeping wrapper of shaping.py: files in `self.files`, then its report."""
        from ..shaping import READ_SH

        try:
            words = shlex.split(command)
        except ValueError:
            return None
        if len(words) < 4 or words[:2] != ["/bin/sh", "-c"] or words[3] != "bottle-exec":
            return None
        if words[2].startswith("n=$1; d=$2; keep=$3"):
            nonce, run_dir, keep, head, tail, inner = words[4:10]
            out, err, code, timed_out = await self._interpret(inner, timeout_s=timeout_s, workdir=workdir)
            for name, data in (("stdout", out), ("stderr", err)):
                self.files[f"{run_dir}/{name}"] = data[: int(keep)]
                self.files[f"{run_dir}/{name}.rest"] = str(max(0, len(data) - int(keep))).encode()
                self.files[f"{run_dir}/{name}.tail"] = data[int(keep) :][-int(tail) :] if len(data) > int(keep) else b""
            if timed_out:
                return b"", b"", 0, True
            rc: int | str = code
        elif words[2] == READ_SH:
            nonce, run_dir, head, tail, rc = words[4:9]
        else:
            return None
        h, t = int(head), int(tail)
        report = [f"{nonce} {rc}"]
        blobs = []
        for name in ("stdout", "stderr"):
            kept = self.files.get(f"{run_dir}/{name}", b"")
            rest = int(self.files.get(f"{run_dir}/{name}.rest", b"0"))
            tail_file = self.files.get(f"{run_dir}/{name}.tail", b"")
            report.append(f"{len(kept)} {rest}")
            if len(kept) + rest <= h + t:
                shown = kept + tail_file
            elif rest >= t:
                shown = kept[:h] + tail_file
            else:
                shown = kept[:h] + kept[-(t - rest) :] + tail_file
            blobs.append(base64.b64encode(shown).decode())
        text = " ".join(report) + f"\nout {blobs[0]}\nerr {blobs[1]}\n"
        return text.encode(), b"", int(rc) if str(rc).isdigit() else 0, False

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
            if prefix not in chosen:  # a folder: its own entry first, as tar makes it
                folder = tarfile.TarInfo(path.name)
                folder.type = tarfile.DIRTYPE
                tf.addfile(folder)
            for name, data in sorted(chosen.items()):
                info = tarfile.TarInfo(str(PurePosixPath(path.name) / PurePosixPath(name).relative_to(path)))
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        if buf.tell() > max_bytes:
            raise PathError(f"{prefix!r} is larger than the copy limit of {max_bytes} bytes")
        return buf.getvalue()

    async def read_tar(self, path: PurePosixPath, consume: Callable[[IO[bytes]], T], *, max_bytes: int) -> T:
        data = await self.get_tar(path, max_bytes=max_bytes)
        return await anyio.to_thread.run_sync(consume, io.BytesIO(data))

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
