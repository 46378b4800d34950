"""A flooding bottle costs the server a bounded share of a core and does not slow other calls.

The flooding supervisor (flood_supervisor.py) plays the worst case: it holds the
channel's key and seals its frames like the real one, then sends one byte of
output per frame, one write per frame, as fast as it can ("flood-live"), or
output for a request that already ended ("flood-stale", the case from the
review: 48 million dropped frames in 20 s). The server's CPU time is measured
over a window with the flood against the same window without it, and the p50 of
list_active and of an exec on another bottle with it against without it, in
alternating rounds (the flooder frozen by the engine in the quiet ones).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import docker
import pytest

from bottle_mcp.backends.docker import channel as channel_module
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.service import BottleService

from .conftest import launch

pytestmark = pytest.mark.anyio

FLOOD_SOURCE = (Path(__file__).parent / "flood_supervisor.py").read_text()
WINDOW_S = 4.0  # of CPU measurement, in all, each way
ROUNDS = 8
SAMPLES = 7  # calls of each kind per round, each way
ATTEMPTS = 3
MAX_CORE_SHARE = 0.30
MAX_P50_RATIO = 2.0


async def _cpu_share(window_s: float) -> float:
    """Share of one core this process (the server) used over `window_s` while the test itself sleeps."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    await anyio.sleep(window_s)
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


async def _p50(call: Callable[[], Awaitable[object]]) -> float:
    took = []
    for _ in range(SAMPLES):
        t0 = time.perf_counter()
        await call()
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


async def _flooding_bottle(service: BottleService) -> DockerBottle:
    mp = pytest.MonkeyPatch()
    mp.setattr(channel_module, "supervisor_source", lambda: FLOOD_SOURCE)
    try:
        bottle = await launch(service, "plain")
        await bottle.exec("ready?", timeout_s=10, workdir=None, output_cap=4096)  # the hostile hello is in
    finally:
        mp.undo()
    return bottle


@pytest.mark.parametrize("mode", ["flood-live", "flood-stale"])
async def test_a_flooding_bottle_costs_the_server_little_and_slows_no_other_call(
    sec_service: BottleService, plain_bottle: DockerBottle, docker_client: docker.DockerClient, mode: str
) -> None:
    other = plain_bottle

    async def list_active() -> object:
        return await sec_service.list_active()

    async def exec_other() -> object:
        res = await sec_service.exec(other.id, "true")
        assert res.exit_code == 0
        return res

    flooder = await _flooding_bottle(sec_service)
    channel = flooder._channel
    assert channel is not None

    async def freeze(frozen: bool) -> None:
        fn = docker_client.api.pause if frozen else docker_client.api.unpause
        await anyio.to_thread.run_sync(fn, flooder.container_id)

    # Quiet and flooded samples alternate (the flooder frozen by the engine, then thawed), so that the
    # load of everything else on this shared machine falls on both alike. That load still moves a p50 of
    # a few milliseconds by more than 2x now and then: a latency verdict gets up to ATTEMPTS measurements.
    report = ""
    try:
        async with anyio.create_task_group() as tg:

            async def flood() -> None:
                await flooder.exec(mode, timeout_s=600, workdir=None, output_cap=1 << 20)

            tg.start_soon(flood)
            await anyio.sleep(0.5)
            for attempt in range(1, ATTEMPTS + 1):
                quiet: dict[str, list[float]] = {"cpu": [], "list": [], "exec": []}
                flooded: dict[str, list[float]] = {"cpu": [], "list": [], "exec": []}
                for _ in range(ROUNDS):
                    for frozen, into in ((True, quiet), (False, flooded)):
                        await freeze(frozen)
                        await anyio.sleep(0.2)
                        into["cpu"].append(await _cpu_share(WINDOW_S / ROUNDS))
                        into["list"].append(await _p50(list_active))
                        into["exec"].append(await _p50(exec_other))
                base_cpu, flood_cpu = statistics.mean(quiet["cpu"]), statistics.mean(flooded["cpu"])
                base_list, flood_list = statistics.median(quiet["list"]), statistics.median(flooded["list"])
                base_exec, flood_exec = statistics.median(quiet["exec"]), statistics.median(flooded["exec"])
                cost = max(0.0, flood_cpu - base_cpu)
                report = (
                    f"[{mode}, attempt {attempt}] server CPU: {base_cpu:.1%} of a core quiet, {flood_cpu:.1%} "
                    f"flooded (flood costs {cost:.1%}); list_active p50 {base_list * 1000:.2f} -> "
                    f"{flood_list * 1000:.2f} ms ({flood_list / base_list:.2f}x); exec on another bottle p50 "
                    f"{base_exec * 1000:.2f} -> {flood_exec * 1000:.2f} ms ({flood_exec / base_exec:.2f}x); "
                    f"frames read {channel.frames}, wasted {channel.junk}, channel: {channel.dead or 'open'}"
                )
                print("\n" + report)
                assert cost <= MAX_CORE_SHARE, report
                if flood_list <= MAX_P50_RATIO * base_list and flood_exec <= MAX_P50_RATIO * base_exec:
                    break
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(docker.errors.APIError):
            await freeze(False)
        await sec_service.stop(flooder.id)
    assert flood_list <= MAX_P50_RATIO * base_list, report
    assert flood_exec <= MAX_P50_RATIO * base_exec, report
    if mode == "flood-stale":
        assert channel.dead is not None and "served no request" in channel.dead, report
