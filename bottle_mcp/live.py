"""The one owner of this server's live bottles: each bottle, the plan it was launched from, the
repository it started at, and the jobs running in it.

The lifecycle part (service.py) adds and removes bottles; the delegation part (delegate.py) hands
work to them; both are given the same `LiveBottles` and neither knows the other. Every call that
reaches into a bottle runs under `LiveBottles.guard`, the one place that deals with a bottle which
vanished behind the server's back: it is forgotten, its jobs are marked gone, what is left of it is
removed, and the error goes on to the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .backends.base import Bottle
from .errors import BottleGoneError, BottleNotFoundError
from .jobs import JobManager
from .models import BottleInfo, BottlePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepoOrigin:
    """Where a copy_cwd bottle's repository came from, and the commit it started at."""

    host_repo: Path
    start: str | None


@dataclass
class LiveBottle:
    """A bottle this server launched and still drives."""

    bottle: Bottle
    plan: BottlePlan
    origin: RepoOrigin | None = None

    @property
    def id(self) -> str:
        return self.bottle.id


@dataclass
class LiveBottles:
    """This server's bottles by id, the jobs in them, and how many launches are under way."""

    list_active: Callable[[], Awaitable[list[BottleInfo]]]
    output_cap: Callable[[], int]
    launching: int = 0
    # Told of every bottle discarded (stopped, or found gone), after its removal: keep.py drops its record.
    on_discard: Callable[[str], Awaitable[None]] | None = None
    # Asked to adopt a kept bottle on first use (keep.py); returns None once it is ours, else why not.
    adopt: Callable[[str], Awaitable[str | None]] | None = None
    _entries: dict[str, LiveBottle] = field(default_factory=dict)
    jobs: JobManager = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = JobManager(self.output_cap)

    def __len__(self) -> int:
        return len(self._entries)

    def all(self) -> list[LiveBottle]:
        return list(self._entries.values())

    def add(self, bottle: Bottle, plan: BottlePlan) -> LiveBottle:
        entry = LiveBottle(bottle=bottle, plan=plan)
        self._entries[bottle.id] = entry
        return entry

    async def get(self, bottle_id: str) -> LiveBottle:
        """A live bottle of this server, or BottleNotFoundError saying whose it is."""
        entry = self._entries.get(bottle_id)
        if entry is not None:
            return entry
        for info in await self.list_active():
            if info.bottle_id == bottle_id and info.owner == "kept" and self.adopt is not None:
                why = await self.adopt(bottle_id)
                adopted = self._entries.get(bottle_id)
                if adopted is not None:
                    return adopted
                raise BottleNotFoundError(bottle_id, f"this server does not drive it: {why or info.note}")
            if info.bottle_id == bottle_id and info.note:
                raise BottleNotFoundError(bottle_id, f"this server does not drive it: {info.note}")
            if info.bottle_id == bottle_id:
                raise BottleNotFoundError(
                    bottle_id,
                    f"it belongs to another server instance ({info.instance}, {info.owner}); a server drives only "
                    "the bottles it launched. Launch your own with prepare_bottle and launch_bottle",
                )
        raise BottleNotFoundError(bottle_id)

    def forget(self, bottle_id: str) -> None:
        """Drop a bottle from the books (its jobs are marked gone); removing it is the caller's."""
        self._entries.pop(bottle_id, None)
        self.jobs.forget_bottle(bottle_id)

    async def discard(self, bottle: Bottle) -> list[str]:
        """Forget a bottle and remove what is left of it; return what was removed. Idempotent."""
        self.forget(bottle.id)
        removed: list[str] = []
        with anyio.CancelScope(shield=True):
            removed = await bottle.aclose()
            if self.on_discard is not None:
                await self.on_discard(bottle.id)
        return removed

    @asynccontextmanager
    async def guard(self, bottle: Bottle) -> AsyncIterator[None]:
        """Run the block against `bottle`; if the bottle turns out to be gone, discard it and re-raise."""
        try:
            yield
        except BottleGoneError:
            await self.discard(bottle)
            raise

    def credential_names(self) -> set[str]:
        """Every credential a live bottle was launched with (by name)."""
        return {c.name for entry in self._entries.values() for c in entry.plan.credentials}

    async def close_all(self, budget_s: float) -> None:
        """Remove every bottle, in parallel, giving up after `budget_s` (cleanup finds the rest)."""
        bottles = [e.bottle for e in self._entries.values()]
        for b in bottles:
            self.forget(b.id)
        if not bottles:
            return
        log.info("removing %d bottle(s) on shutdown", len(bottles))
        started = time.monotonic()
        with anyio.CancelScope(shield=True), anyio.move_on_after(budget_s) as scope:
            async with anyio.create_task_group() as tg:
                for b in bottles:
                    tg.start_soon(_close_quietly, b)
        took = time.monotonic() - started
        if scope.cancelled_caught:
            log.warning("gave up removing bottles after %.1f s; `bottle-mcp cleanup` will find them", took)
        else:
            log.info("removed %d bottle(s) in %.2f s", len(bottles), took)


async def _close_quietly(bottle: Bottle) -> None:
    try:
        await bottle.aclose()
    except Exception:
        log.exception("could not remove bottle %s; `bottle-mcp cleanup` will find it", bottle.id)
