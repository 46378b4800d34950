"""One path for a bottle that vanished: every operation that reaches into it forgets it the same way.

On the fake backend, a bottle's container is taken out of the pretend engine behind the server's
back; whichever call meets it first raises BottleGoneError, the bottle leaves the server's books (a
second call says it is not this server's), and what was left of it is removed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.fake import FakeBackend, FakeWorld
from bottle_mcp.errors import BottleGoneError, BottleNotFoundError
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

MANIFEST = """\
[host]
approve = "never"

[bottles.offline]
image = "bottle-mcp/worker:latest"

[agents.worker]
bottle = "offline"
command = ["true"]
"""

Op = Callable[[BottleService, str, Path], Awaitable[object]]

OPERATIONS: dict[str, Op] = {
    "exec": lambda s, b, _: s.exec(b, "echo hi"),
    "cp_in": lambda s, b, root: s.cp_in(b, str(root / "note.txt"), "/workspace/note.txt"),
    "cp_out": lambda s, b, _: s.delegate.cp_out(b, "/workspace/x", "out"),
    "exec_background": lambda s, b, _: s.exec(b, "sleep 5", background=True),
    "run_agent": lambda s, b, _: s.delegate.run_agent(b, "do it", timeout_s=60, workdir=None),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_a_vanished_bottle_is_forgotten_and_removed_by_whatever_meets_it(
    operation: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    world = FakeWorld()
    path = write_manifest(MANIFEST)
    (tmp_path / "note.txt").write_text("hello\n")
    service = BottleService(
        ServiceConfig(manifest_path=path, cwd=tmp_path, host_roots=[tmp_path]), FakeBackend(Instance.current(), world)
    )
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    container = next(o for o in world.objects.values() if o.kind == "container" and o.running)
    container.running = False  # stopped behind the server's back

    with pytest.raises(BottleGoneError):
        await OPERATIONS[operation](service, bid, tmp_path)

    assert service.live_bottles == []
    assert not any(o.labels.get(L.BOTTLE) == bid for o in world.objects.values())
    with pytest.raises(BottleNotFoundError):
        await service.exec(bid, "echo again")
    await service.aclose()
