"""Kept bottles on the Docker engine: a reaper per bottle, deadlines, re-attaching and removal by label.

Each bottle a keeping server launches gets a reaper (`data/reaper.py`): a tiny
container with the engine's socket, no network, no capabilities and a read-only
root, whose name ends in the bottle's deadline (seconds since the epoch). The
server keeps moving that deadline ahead while it runs (by renaming the reaper);
when no server moves it any more, the reaper removes the bottle, its sidecars,
networks and volumes, and then itself. The engine restarts the reaper if the engine
itself restarts, so a reboot does not stop the clock either. Why a container with
the engine socket, and what that costs: docs/architecture.md, "Kept bottles".
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import anyio
import docker
from docker.types import Mount

from ... import labels as L
from ...errors import BottleError, EngineError, EngineNotFoundError
from ...models import BottleInfo
from .bottle import DockerBottle
from .engine import Engine, flavour
from .mould import Mould

log = logging.getLogger(__name__)

REAPER_IMAGE = "bottle-mcp/base:bookworm"
REAPER_PREFIX = "bottle-mcp-keep-"
REAPER_SOCK = "/run/bottle-mcp/engine.sock"


def reaper_source() -> str:
    return (resources.files("bottle_mcp") / "data" / "reaper.py").read_text(encoding="utf-8")


def engine_socket(engine: Engine) -> str | None:
    """The engine's Unix socket path on the engine's host, or None when the engine is reached otherwise."""
    endpoint = getattr(engine, "endpoint", None)
    url = str(getattr(endpoint, "url", None) or engine.where)
    if url.startswith("unix://"):
        return url.removeprefix("unix://").split(" ", 1)[0]
    return None


def reaper_name(bottle_id: str, until: int) -> str:
    return f"{REAPER_PREFIX}{bottle_id}-{until}"


def deadline_of(name: str) -> int | None:
    tail = name.lstrip("/").rsplit("-", 1)[-1]
    return int(tail) if name.lstrip("/").startswith(REAPER_PREFIX) and tail.isdigit() else None


def podman_problem(c: docker.DockerClient) -> str | None:
    """Why no reaper can run on this engine when it is Podman with a default runtime other than runc."""
    if flavour(c) != "podman":
        return None
    default = str(c.info().get("DefaultRuntime") or "runc")
    if default == "runc":
        return None
    return (
        f"Podman runs every container with its default runtime ({default}), and a reaper under it cannot "
        "reach the engine's socket; bottles are removed when the server stops"
    )


class KeptBottle(DockerBottle):
    """A bottle this server adopted: its sidecars are known only by label, and removal is by label."""

    def __init__(self, keeper: DockerKeeper, **kwargs: Any) -> None:
        super().__init__(keeper.engine, **kwargs)
        self._keeper = keeper

    async def aclose(self) -> list[str]:
        if self._closed:
            return []
        if self._channel is not None:
            self._channel.close()
        with anyio.CancelScope(shield=True):
            removed = await self._keeper.remove_bottle(self.id)
        self._closed = True
        return removed


class DockerKeeper:
    def __init__(self, engine: Engine, instance: L.Instance) -> None:
        self.engine = engine
        self.instance = instance
        self._reapers: dict[str, str] = {}  # bottle id -> reaper container id
        self._until: dict[str, int] = {}  # bottle id -> the deadline last written (the engine refuses a no-op rename)

    def unavailable(self) -> str | None:
        """Why bottles cannot be kept on this engine, or None."""
        if engine_socket(self.engine) is None:
            return (
                f"the engine is reached at {self.engine.where}, not through a Unix socket, so no reaper can "
                "reach it; bottles are removed when the server stops"
            )
        return None

    async def arm(self, bottle_id: str, until: int) -> None:
        """Start the bottle's reaper with this deadline."""
        sock = engine_socket(self.engine)
        if sock is None:
            raise BottleError(self.unavailable() or "no engine socket")
        labels = self.instance.labels(
            "reaper", **{L.BOTTLE: bottle_id, L.CREATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        )

        def create(c: docker.DockerClient) -> str:
            problem = podman_problem(c)
            if problem is not None:
                raise BottleError(problem)
            mould = Mould(
                image=REAPER_IMAGE,
                command=["python3", "-I", "-S", "-c", reaper_source(), bottle_id],
                name=reaper_name(bottle_id, until),
                user="0",  # the socket is root's; the process has no capabilities
                labels=labels,
                network_mode="none",
                pids=16,
                memory=48 * 1024**2,
                restart_policy={"Name": "unless-stopped"},
                runtime="runc",  # it talks to the host's engine socket, which a gVisor sandbox would not pass
                mounts=(Mount(target=REAPER_SOCK, source=sock, type="bind"),),
            )
            made = {"Id": mould.create(c)}
            cid = str(made["Id"])
            try:
                c.api.start(cid)
            except BaseException:
                with contextlib.suppress(Exception):
                    c.api.remove_container(cid, force=True)
                raise
            return cid

        self._reapers[bottle_id] = await self.engine.call("start the bottle's reaper", create)

    async def _reaper_id(self, bottle_id: str) -> str | None:
        cid = self._reapers.get(bottle_id)
        if cid is not None:
            return cid
        rows = await self.engine.call(
            "find the bottle's reaper",
            lambda c: c.api.containers(all=True, filters={"label": [f"{L.ROLE}=reaper", f"{L.BOTTLE}={bottle_id}"]}),
        )
        if not rows:
            return None
        self._reapers[bottle_id] = str(rows[0]["Id"])
        # Its deadline as found: moving it to the same second would be refused as a rename to its own name.
        until = deadline_of(str((rows[0].get("Names") or ["/"])[0]))
        if until is not None:
            self._until[bottle_id] = until
        return self._reapers[bottle_id]

    async def extend(self, bottle_id: str, until: int) -> bool:
        """Move the bottle's deadline; False when it has no reaper (any more)."""
        cid = await self._reaper_id(bottle_id)
        if cid is None:
            return False
        if self._until.get(bottle_id) == until:
            return True
        try:
            new_name = reaper_name(bottle_id, until)
            await self.engine.call("move the bottle's deadline", lambda c: c.api.rename(cid, new_name))
        except EngineNotFoundError:
            self._reapers.pop(bottle_id, None)
            return False
        except EngineError as e:
            if "same name" not in str(e):
                raise
            # Another server moved it to this very second a moment ago: the deadline is where we want it.
        self._until[bottle_id] = until
        return True

    async def disarm(self, bottle_id: str) -> None:
        cid = await self._reaper_id(bottle_id)
        self._reapers.pop(bottle_id, None)
        if cid is not None:
            with contextlib.suppress(EngineError):
                await self.engine.remove_resource("container", cid, "the bottle's reaper")

    async def deadlines(self) -> dict[str, int]:
        """Bottle id -> deadline (epoch seconds) of every running reaper on the engine."""
        rows = await self.engine.call(
            "list reapers",
            lambda c: c.api.containers(filters={"label": [f"{L.MANAGED}=true", f"{L.ROLE}=reaper"]}),
        )
        out: dict[str, int] = {}
        for row in rows:
            until = deadline_of(str((row.get("Names") or ["/"])[0]))
            bottle = (row.get("Labels") or {}).get(L.BOTTLE)
            if until is not None and bottle:
                out[bottle] = until
        return out

    async def reattach(self, bottle_id: str, env: dict[str, str], *, channel: bool = True) -> KeptBottle:
        """A handle on a kept bottle found by its label; BottleError when it is not there or not running.

        Without `channel`, commands use one engine exec each (for a short look that should leave
        no supervisor behind).
        """
        rows = await self.engine.call(
            "find a kept bottle",
            lambda c: c.api.containers(
                all=True, filters={"label": [f"{L.MANAGED}=true", f"{L.ROLE}=bottle", f"{L.BOTTLE}={bottle_id}"]}
            ),
        )
        if not rows:
            raise BottleError(f"kept bottle {bottle_id!r} is no longer on the engine")
        row = rows[0]
        if row.get("State") != "running":
            raise BottleError(f"kept bottle {bottle_id!r} is {row.get('State')}, not running")
        cid = str(row["Id"])
        inspected = await self.engine.call("inspect a kept bottle", lambda c: c.api.inspect_container(cid))
        lab: dict[str, str] = row.get("Labels") or {}
        workdir = inspected["Config"].get("WorkingDir") or "/"
        volume = next(
            (str(m["Name"]) for m in inspected.get("Mounts") or [] if m.get("Type") == "volume"), f"{cid}-work"
        )
        for m in inspected.get("Mounts") or []:
            if m.get("Type") == "volume" and m.get("Destination") == workdir:
                volume = str(m["Name"])
        name = str(inspected.get("Name", "")).lstrip("/")
        info = BottleInfo(
            bottle_id=bottle_id,
            agent=lab.get(L.AGENT) or name.removeprefix("bottle-mcp-").removesuffix(f"-{bottle_id}") or "?",
            bottle=lab.get(L.BOTTLE_DEF, "?"),
            backend="docker",
            status="running",
            runtime=lab.get(L.RUNTIME, "?"),
            image=str(inspected["Config"].get("Image", "?")),
            created_at=lab.get(L.CREATED, "?"),
            owner="this-server",
            instance=lab.get(L.INSTANCE, "?"),
        )
        user = str(inspected["Config"].get("User") or "0")
        handle = KeptBottle(self, container_id=cid, volume=volume, info=info, user=user, env=env)
        if not channel:
            handle.no_channel()
        return handle

    async def remove_bottle(self, bottle_id: str) -> list[str]:
        """Remove every container, volume and network labelled with this bottle id (its reaper too)."""
        flt = {"label": [f"{L.MANAGED}=true", f"{L.BOTTLE}={bottle_id}"]}
        self._reapers.pop(bottle_id, None)
        removed: list[str] = []
        rows = await self.engine.call("list the bottle's containers", lambda c: c.api.containers(all=True, filters=flt))

        async def drop(cid: str, what: str) -> None:
            if await self.engine.remove_resource("container", cid, what):
                removed.append(f"{what} {cid[:12]}")

        async with anyio.create_task_group() as tg:
            for row in rows:
                role = (row.get("Labels") or {}).get(L.ROLE, "container")
                tg.start_soon(drop, str(row["Id"]), "container" if role == "bottle" else role)
        vols = await self.engine.call("list the bottle's volumes", lambda c: c.api.volumes(filters=flt))
        for vol in (vols or {}).get("Volumes") or []:
            if await self.engine.remove_resource("volume", str(vol["Name"])):
                removed.append(f"volume {vol['Name']}")
        nets = await self.engine.call("list the bottle's networks", lambda c: c.api.networks(filters=flt))
        for net in nets:
            if await self.engine.remove_resource("network", str(net["Id"])):
                removed.append(f"network {net['Name']}")
        return removed
