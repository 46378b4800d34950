"""The exec channel on the real engine: same guarantees as an engine exec, and it survives a hostile bottle."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from bottle_mcp.backends.docker import DockerBackend, Engine
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

pytestmark = pytest.mark.anyio


async def _bottle(service: BottleService) -> tuple[str, DockerBottle]:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    bottle = service.live_bottles[-1]
    assert isinstance(bottle, DockerBottle)
    return bid, bottle


async def _procs(service: BottleService, bid: str, word: str) -> list[str]:
    ps = await service.exec(bid, "ps -e -o pid=,args=")
    return [ln for ln in ps.stdout.splitlines() if word in ln and "ps -e" not in ln]


async def test_commands_run_over_the_channel_binary_safe_with_exit_codes(service: BottleService) -> None:
    bid, bottle = await _bottle(service)
    res = await service.exec(bid, "printf 'a\\000\\377'; printf e >&2; exit 7")
    assert bottle.channel_alive
    assert (res.exit_code, res.stderr, res.stdout_bytes) == (7, "e", 3)
    assert res.stdout.startswith("a\\x00")
    res = await service.exec(bid, "pwd; echo $BOTTLE_AGENT", workdir="/tmp")
    assert res.stdout == "/tmp\nworker\n"
    res = await service.exec(bid, "true", workdir="/does/not/exist")
    assert res.exit_code != 0 and "/does/not/exist" in res.stderr


async def test_a_timeout_kills_the_whole_session_for_real(service: BottleService) -> None:
    bid, _ = await _bottle(service)
    res = await service.exec(bid, "sleep 301 & setsid sleep 302 & sleep 303", timeout_s=1)
    assert res.timed_out and res.exit_code is None and "killed" in res.notes[0]
    assert await _procs(service, bid, "sleep 30") == []


async def test_a_cancelled_exec_kills_its_processes(service: BottleService) -> None:
    bid, _ = await _bottle(service)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.exec(bid, "sleep 304", timeout_s=60))
        with anyio.fail_after(10):
            while not await _procs(service, bid, "sleep 304"):  # noqa: ASYNC110 - polling the bottle
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        while await _procs(service, bid, "sleep 304"):  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_a_killed_supervisor_is_not_replaced_and_commands_keep_working_through_the_engine(
    service: BottleService,
) -> None:
    bid, bottle = await _bottle(service)
    res = await service.exec(bid, "kill -KILL $PPID")  # the agent kills the supervisor under its own command
    assert res.exit_code is None and "channel broke" in res.notes[0]
    # A new supervisor would be exposed while it starts: the bottle goes on with engine execs.
    res = await service.exec(bid, "echo again; exit 3")
    assert (res.stdout, res.exit_code) == ("again\n", 3)
    assert not bottle.channel_alive


async def test_a_frozen_supervisor_cannot_hang_the_server(service: BottleService) -> None:
    bid, bottle = await _bottle(service)
    with anyio.fail_after(20):
        res = await service.exec(bid, "kill -STOP $PPID; sleep 305", timeout_s=1)
    assert res.timed_out
    res = await service.exec(bid, "echo fine")
    assert res.stdout == "fine\n" and not bottle.channel_alive
    assert any("one engine exec each" in n for n in res.notes), res.notes
    # The kill went through the engine instead, aimed at the command's session.
    assert await _procs(service, bid, "sleep 305") == []
    # The stopped supervisor was retired, not left behind.
    assert await _procs(service, bid, "exec-channel") == []


class CountingEngine(Engine):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def call(self, what: str, fn: Any) -> Any:
        self.calls.append(what)
        return await super().call(what, fn)

    async def run(self, fn: Any, *args: Any, abandon_on_cancel: bool = False) -> Any:
        self.calls.append(getattr(fn, "__name__", "run"))
        return await super().run(fn, *args, abandon_on_cancel=abandon_on_cancel)


async def test_list_active_is_one_engine_call_whatever_the_number_of_bottles(
    example_manifest: Any, tmp_path: Any
) -> None:
    engine = CountingEngine()
    svc = BottleService(
        ServiceConfig(manifest_path=example_manifest, cwd=tmp_path), DockerBackend(Instance.current(), engine)
    )
    try:
        counts = []
        for n in (1, 4):
            while len(svc.live_bottles) < n:
                plan = await svc.prepare("worker")
                await svc.launch(plan.plan_id)
            engine.calls.clear()
            listed = await svc.list_active()
            counts.append(len(engine.calls))
            assert len([b for b in listed if b.owner == "this-server"]) == n
        # The bottles, and the reapers that say how long each is kept: the same for 1 bottle as for 4.
        assert counts[0] == counts[1] <= 2, counts
    finally:
        await svc.aclose()
