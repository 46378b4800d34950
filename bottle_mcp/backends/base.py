"""The backend contract: prepare -> plan -> launch -> bottle -> exec / cp_in -> aclose.

A backend turns a `BottleSpec` into a reviewed `BottlePlan` (creating nothing),
brings a plan up as a running `Bottle`, finds and removes what earlier server
instances left behind, and tells `doctor` what it needs from its host. `prepare`
is a template method: the host-side part (bottle_mcp.planning) runs first and
cannot be skipped; the backend adds only its own part (`BackendPlan`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import IO, Any, Literal, Protocol, TypeVar

import anyio.to_thread

from .. import planning
from ..labels import Instance
from ..manifest import AgentDef, BottleDef, LoadedManifest
from ..models import (
    BottleInfo,
    BottlePlan,
    BottleSpec,
    CleanupPlan,
    CleanupReport,
    EgressRecords,
    ExecResult,
    GateRecords,
)

T = TypeVar("T")

Progress = Callable[[str], Awaitable[None]]


async def _no_progress(_: str) -> None:
    return None


Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Diagnosis:
    """One finding of `Backend.diagnose`: what was checked, how it went, and the fix unless ok."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


class Bottle(Protocol):
    """A running bottle owned by this server (an async resource: `aclose` removes it)."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> BottleInfo: ...

    async def exec(
        self, command: str, *, timeout_s: float, workdir: str | None, output_cap: int, stdin: bytes | None = None
    ) -> ExecResult:
        """Run `command` with /bin/sh -c. Kills the process in the bottle on timeout or cancellation."""
        ...

    async def put_tar(self, tar: IO[bytes], dest_dir: PurePosixPath) -> None:
        """Unpack a tar stream into `dest_dir` inside the bottle, as the bottle's user."""
        ...

    async def get_tar(self, path: PurePosixPath, *, max_bytes: int) -> bytes:
        """A tar of `path` made inside the bottle (symlinks stored as links); callers treat it as hostile.

        Raises PathError when the path does not exist, a component of it is a symlink, or the tar
        would be larger than `max_bytes`.
        """
        ...

    async def read_tar(self, path: PurePosixPath, consume: Callable[[IO[bytes]], T], *, max_bytes: int) -> T:
        """Like get_tar, but the tar is streamed into `consume` (called in a worker thread) and never held
        whole; returns what `consume` returns. Errors as get_tar (they win over what `consume` raised)."""
        ...

    async def aclose(self) -> list[str]:
        """Remove the bottle and everything it owns; return what was removed. Idempotent."""
        ...

    async def egress_log(self) -> tuple[list[str], EgressRecords]:
        """The egress allow-list and every allow/deny decision so far (both empty without egress)."""
        ...

    async def gate_log(self) -> tuple[dict[str, str], dict[str, str], GateRecords]:
        """Git remotes -> upstreams, ssh aliases -> host:port, and the gate's events (empty without a gate)."""
        ...


class Backend(ABC):
    """Base class of every backend."""

    name: str

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    async def prepare(self, spec: BottleSpec) -> BottlePlan:
        """Validate the spec on the host, then let the backend resolve the rest. Creates nothing."""
        agent, bottle = planning.validate(spec)
        host = await planning.host_plan(spec, agent, bottle, self.offload)
        own = await self._resolve_plan(spec, agent, bottle)
        return planning.assemble(self.name, spec, host, own)

    @abstractmethod
    async def _resolve_plan(self, spec: BottleSpec, agent: AgentDef, bottle: BottleDef) -> planning.BackendPlan:
        """The backend's part of the plan (image, runtime, mounts, network, resources) and its warnings."""

    @abstractmethod
    async def launch(self, plan: BottlePlan, spec: BottleSpec, progress: Progress = _no_progress) -> Bottle:
        """Bring the plan up and provision it. On failure, remove whatever was created, then raise."""

    @abstractmethod
    async def list_active(self) -> list[BottleInfo]:
        """Every bottle on this backend, this server's and others'."""

    @abstractmethod
    async def prepare_cleanup(self) -> CleanupPlan:
        """Find what server instances that are gone left behind. No side effects."""

    @abstractmethod
    async def cleanup(self, plan: CleanupPlan) -> CleanupReport:
        """Remove everything in `plan.remove`."""

    async def diagnose(self, manifest: LoadedManifest | None, environ: Mapping[str, str]) -> list[Diagnosis]:
        """What `doctor` should know about the backend's host (engine, runtimes, images). Read-only."""
        del manifest, environ
        return [Diagnosis("engine", "ok", f"backend {self.name!r} needs no container engine")]

    async def offload(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking host work (tree walks, packing tars with `paths.packed_tar`) in a worker thread."""
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def keep_warm(self, manifest: LoadedManifest, sizes: dict[str, int]) -> None:  # noqa: B027 - optional
        """Keep `sizes[bottle]` started spares of each bottle definition until cancelled, then remove them.

        Launches claim spares when they fit their plan. A backend without pools returns at once and
        every launch is cold.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release engine connections."""
