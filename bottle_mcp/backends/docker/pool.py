"""Warm pools: started, hardened spare containers that a launch claims instead of creating one.

A spare is created exactly like a cold bottle of its bottle definition (same
image, runtime, limits, mounts, labels; exec channel already running) except
for what depends on the agent: the agent's name and credentials are set per
command, and the container gets its agent's name when it is claimed (a spare
is named `bottle-mcp.warm.<id>`, which list_active leaves out). Spares carry the
server's labels, so a crash leaves nothing `cleanup` cannot find. The pool
refills in the background and removes its spares when the server stops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio

from ... import labels as L
from ...errors import BottleError
from ...manifest import BottleDef
from .channel import Channel, ChannelError

log = logging.getLogger(__name__)

SPARE_PREFIX = "bottle-mcp.warm."
FILL_CONCURRENCY = 4
RETRY_S = 5.0


def pool_key(bottle: str, bdef: BottleDef, image: str, runtime: str) -> str:
    """Spares are interchangeable only when everything that shaped their container is the same."""
    shape = bdef.model_dump(mode="json", exclude={"warm_pool", "ssh", "git", "egress"})
    text = json.dumps([bottle, shape, image, runtime], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Started:
    container_id: str
    volume: str
    created: str


@dataclass
class Spare:
    bottle_id: str
    container_id: str
    volume: str
    created: str
    channel: Channel | None


@dataclass
class PoolTarget:
    bottle: str
    bdef: BottleDef
    image: str
    runtime: str
    size: int


StartFn = Callable[[str, str, str, BottleDef, str, str, dict[str, str], dict[str, str]], Awaitable[Started]]
RemoveFn = Callable[[str, str], Coroutine[Any, Any, None]]


class WarmPool:
    def __init__(self, open_channel: Callable[[str, str, str], Awaitable[Channel]]) -> None:
        """`open_channel(container_id, bottle_id, user)` starts a spare's exec channel."""
        self._open_channel = open_channel
        self._spares: dict[str, list[Spare]] = {}
        self._targets: dict[str, PoolTarget] = {}
        self._wake = anyio.Event()
        self._drain_lock = anyio.Lock()
        self._filling = 0

    def claim(self, key: str) -> Spare | None:
        spares = self._spares.get(key)
        if not spares:
            return None
        spare = spares.pop(0)
        self._wake.set()
        return spare

    def count(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._spares.get(key, []))
        return sum(len(v) for v in self._spares.values())

    async def keep_filled(self, targets: list[PoolTarget], start: StartFn, remove: RemoveFn) -> None:
        """Keep every target at its size until cancelled; then remove the spares (shielded)."""
        self._targets = {pool_key(t.bottle, t.bdef, t.image, t.runtime): t for t in targets if t.size > 0}
        try:
            while True:
                self._wake = anyio.Event()
                async with anyio.create_task_group() as tg:
                    limiter = anyio.CapacityLimiter(FILL_CONCURRENCY)
                    for key, target in self._targets.items():
                        for _ in range(target.size - len(self._spares.setdefault(key, []))):
                            tg.start_soon(self._add, key, target, start, remove, limiter)
                with anyio.move_on_after(RETRY_S):
                    await self._wake.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.drain(remove)

    async def _add(
        self, key: str, t: PoolTarget, start: StartFn, remove: RemoveFn, limiter: anyio.CapacityLimiter
    ) -> None:
        async with limiter:
            bottle_id = f"b-{secrets.token_hex(4)}"
            name = f"{SPARE_PREFIX}{bottle_id}"
            try:
                made = await start(bottle_id, name, t.bottle, t.bdef, t.image, t.runtime, {}, {L.POOL: "warm"})
            except BottleError as e:
                log.warning("could not add a warm %r bottle (retrying in %g s): %s", t.bottle, RETRY_S, e)
                return
            channel: Channel | None = None
            try:
                channel = await self._open_channel(made.container_id, bottle_id, t.bdef.user)
            except (ChannelError, BottleError) as e:
                log.info("warm bottle %s has no exec channel yet: %s", bottle_id, e)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await remove(made.container_id, made.volume)
                raise
            self._spares.setdefault(key, []).append(
                Spare(bottle_id, made.container_id, made.volume, made.created, channel)
            )

    async def drain(self, remove: RemoveFn) -> None:
        """Remove every spare, in parallel. Idempotent."""
        async with self._drain_lock:
            spares = [s for v in self._spares.values() for s in v]
            self._spares.clear()
            if not spares:
                return
            log.info("removing %d warm bottle(s)", len(spares))
            async with anyio.create_task_group() as tg:
                for s in spares:
                    if s.channel is not None:
                        s.channel.close()
                    tg.start_soon(remove, s.container_id, s.volume)
