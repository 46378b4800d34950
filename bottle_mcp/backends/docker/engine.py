"""The one door to the Docker engine: every docker-py call passes here.

Calls run in worker threads (docker-py blocks), bounded by a limiter that
matches the connection pool, and engine failures become the project's errors
in exactly one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import docker
import docker.errors
import requests.exceptions

from ...errors import EngineError, EngineNotFoundError, EngineUnreachableError
from ...models import ResourceKind
from .endpoint import Endpoint, connect, failure_fix, resolve

T = TypeVar("T")

POOL_SIZE = 64
HTTP_TIMEOUT_S = 30
STALE_RETRIES = 3


class Engine:
    """A lazily connected docker-py client plus the off-loop call helper."""

    def __init__(self, endpoint: Endpoint | None = None, *, context: str | None = None) -> None:
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(POOL_SIZE)
        self.endpoint = endpoint or resolve(context)
        self.where = self.endpoint.describe()

    def _connect(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = connect(self.endpoint, max_pool_size=POOL_SIZE, timeout=HTTP_TIMEOUT_S)
            return self._client

    def unreachable(self, detail: str) -> EngineUnreachableError:
        """The error for a failure to reach this engine, with the fix that fits its transport and cause."""
        return EngineUnreachableError(self.where, detail, failure_fix(self.endpoint, detail))

    def call_sync(self, what: str, fn: Callable[[docker.DockerClient], T]) -> T:
        """Run fn(client) here and now, mapping engine errors. For use inside worker threads."""
        try:
            return self._call_with_stale_retry(fn)
        except docker.errors.NotFound as e:
            raise EngineNotFoundError(f"{what}: {_explain(e)}") from None
        except docker.errors.APIError as e:
            raise EngineError(f"{what}: the engine refused: {_explain(e)}") from None
        except (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError) as e:
            self._client = None
            raise self.unreachable(_short(e)) from None
        except requests.exceptions.Timeout as e:
            raise self.unreachable(f"no answer within {HTTP_TIMEOUT_S} s: {_short(e)}") from None
        except docker.errors.DockerException as e:
            text = str(e)
            if "Connection" in text or "No such file" in text or "Error while fetching server API" in text:
                self._client = None
                raise self.unreachable(_short(e)) from None
            raise EngineError(f"{what}: {text}") from None

    def _call_with_stale_retry(self, fn: Callable[[docker.DockerClient], T]) -> T:
        # Over ssh://, a pooled connection whose ssh process has ended answers its next request
        # with a disconnect before reading it; the pool drops it, so the call is retried.
        for _ in range(STALE_RETRIES):
            try:
                return fn(self._connect())
            except requests.exceptions.ConnectionError as e:
                if self.endpoint.transport != "ssh" or "RemoteDisconnected" not in str(e):
                    raise
        return fn(self._connect())

    async def call(self, what: str, fn: Callable[[docker.DockerClient], T]) -> T:
        """Run fn(client) in a worker thread."""
        return await anyio.to_thread.run_sync(partial(self.call_sync, what, fn), limiter=self._limiter)

    async def remove(self, what: str, fn: Callable[[docker.DockerClient], object], *, attempts: int = 10) -> bool:
        """Run a removal; True if it removed something, False if it was already gone.

        The engine may refuse to remove a volume or network for a moment after the containers
        that used it went, so a refusal is retried (every 0.2 s) before it is raised.
        """
        for attempt in range(attempts):
            try:
                await self.call(what, fn)
                return True
            except EngineNotFoundError:
                return False
            except EngineError:
                if attempt == attempts - 1:
                    raise
                await anyio.sleep(0.2)
        return False

    async def remove_resource(self, kind: ResourceKind, ref: str, what: str | None = None) -> bool:
        """Remove a container (killed first), volume or network; False if it was already gone.

        The one way resources are removed: volumes and networks get the retries of `remove`.
        """
        fn = {"container": remove_container, "volume": _remove_volume, "network": _remove_network}[kind](ref)
        return await self.remove(f"remove {what or kind}", fn, attempts=1 if kind == "container" else 10)

    async def remove_containers(self, named: list[tuple[str, str | None]]) -> list[str]:
        """Remove containers given as (what, id), skipping None ids; return 'what id' of those removed."""
        removed: list[str] = []
        for what, cid in named:
            if cid is not None and await self.remove_resource("container", cid, what):
                removed.append(f"{what} {cid[:12]}")
        return removed

    async def run(self, fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        """Run any blocking function (already mapping its own errors) in a worker thread, under the limiter."""
        return await anyio.to_thread.run_sync(
            partial(fn, *args), limiter=self._limiter, abandon_on_cancel=abandon_on_cancel
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _explain(e: docker.errors.APIError) -> str:
    explanation = e.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or e)


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "..."


def remove_container(container_id: str) -> Callable[[docker.DockerClient], None]:
    """A removal of a container (killing it first) for Engine.call / Engine.remove."""

    def remove(c: docker.DockerClient) -> None:
        c.api.remove_container(container_id, force=True)

    return remove


def _remove_volume(name: str) -> Callable[[docker.DockerClient], None]:
    return lambda c: c.api.remove_volume(name, force=True)


def _remove_network(network: str) -> Callable[[docker.DockerClient], None]:
    return lambda c: c.api.remove_network(network)


def flavour(c: docker.DockerClient) -> str:
    """Which engine answers: "podman" (its Docker-compatible API) or "docker". Asked once per client."""
    known = getattr(c, "_bottle_mcp_flavour", None)
    if isinstance(known, str):
        return known
    components = c.version().get("Components") or []
    name = "podman" if any("podman" in str(comp.get("Name", "")).lower() for comp in components) else "docker"
    c._bottle_mcp_flavour = name  # type: ignore[attr-defined]
    return name


@dataclass(frozen=True)
class Rootless:
    """Whether the engine runs without root, and what that takes from a bottle's limits."""

    rootless: bool
    limits_problem: str | None  # why it cannot apply a bottle's memory and process limits, or None


# The cgroup controllers a bottle's limits need (memory, processes, CPU).
LIMIT_CONTROLLERS = frozenset({"memory", "pids", "cpu"})


def rootless(c: docker.DockerClient) -> Rootless:
    """Read once per client. Docker says "rootless" in its security options; Podman's Docker-compatible
    answer does not, its own API does (with the cgroup controllers its containers may use)."""
    known = getattr(c, "_bottle_mcp_rootless", None)
    if isinstance(known, Rootless):
        return known
    info = c.info()
    is_rootless = any("rootless" in str(opt) for opt in info.get("SecurityOptions") or [])
    version = f"v{info.get('CgroupVersion') or 1}"
    controllers: set[str] | None = None
    if flavour(c) == "podman":
        host = c.api.get(f"{c.api.base_url}/v4.0.0/libpod/info", timeout=HTTP_TIMEOUT_S).json().get("host") or {}
        is_rootless = is_rootless or bool((host.get("security") or {}).get("rootless"))
        version = str(host.get("cgroupVersion") or version)
        controllers = set(host.get("cgroupControllers") or [])
    problem: str | None = None
    if is_rootless and version == "v1":
        problem = (
            "the engine is rootless on a cgroup v1 host, where containers cannot be given memory, process or "
            "CPU limits (the engine would drop them)"
        )
    elif is_rootless and controllers is not None and LIMIT_CONTROLLERS - controllers:
        missing = ", ".join(sorted(LIMIT_CONTROLLERS - controllers))
        problem = f"the engine is rootless and the cgroup controllers {missing} are not delegated to its user"
    found = Rootless(is_rootless, problem)
    c._bottle_mcp_rootless = found  # type: ignore[attr-defined]
    return found


def selectable_runtimes(info: dict[str, Any], engine_kind: str) -> set[str]:
    """The runtimes a bottle can really be given.

    Podman's Docker-compatible API lists every runtime it knows but ignores the one a container
    asks for and runs its default: there, only the default can be promised.
    """
    runtimes = set((info.get("Runtimes") or {}).keys())
    if engine_kind == "podman":
        return {str(info.get("DefaultRuntime") or "runc")}
    return runtimes
