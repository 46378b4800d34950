"""Bad input on the real engine: huge arguments, binary and oversized output, unknown ids."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.errors import BottleError, BottleNotFoundError
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

pytestmark = pytest.mark.anyio


async def test_huge_binary_and_hostile_arguments_are_handled(service: BottleService) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    big = "x" * 128_000
    res = await service.exec(bid, f": {big}; echo ok")
    assert res.stdout == "ok\n"
    blob = os.urandom(4096)
    octal = "".join(f"\\{b:03o}" for b in blob)
    res = await service.exec(bid, f"printf '{octal}'")
    assert res.exit_code == 0 and res.stdout_bytes == 4096
    res = await service.exec(bid, "head -c 3000000 /dev/urandom; head -c 3000000 /dev/urandom >&2")
    assert res.truncated and res.stdout_bytes == 3_000_000 and res.stderr_bytes == 3_000_000
    for bad_id in ["b-nope", "", "x" * 64, "b-../../etc", "\x00"]:
        with pytest.raises(BottleNotFoundError, match="no bottle"):
            await service.exec(bad_id, "true")
    for workdir in ["relative", "/tmp/../etc"]:
        with pytest.raises(BottleError) as err:
            await service.exec(bid, "true", workdir=workdir)
        assert "workdir" in str(err.value)


@pytest.fixture
def live_bottle(example_manifest: Path, tmp_path: Path) -> Iterator[tuple[BlockingPortal, BottleService, str]]:
    """A bottle driven from synchronous code (hypothesis runs examples synchronously)."""
    with start_blocking_portal() as portal:
        svc = BottleService(
            ServiceConfig(manifest_path=example_manifest, cwd=tmp_path), DockerBackend(Instance.current())
        )

        async def launch() -> str:
            plan = await svc.prepare("worker")
            return (await svc.launch(plan.plan_id)).bottle_id

        try:
            yield portal, svc, portal.call(launch)
        finally:
            portal.call(svc.aclose)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=2048), code=st.integers(min_value=0, max_value=255))
def test_any_output_bytes_and_exit_code_come_back_exactly_counted(
    live_bottle: tuple[BlockingPortal, BottleService, str], payload: bytes, code: int
) -> None:
    portal, service, bid = live_bottle
    octal = "".join(f"\\{b:03o}" for b in payload)
    cmd = f"printf '{octal}'; printf '{octal}' >&2; exit {code}"
    res = portal.call(lambda: service.exec(bid, cmd))
    assert (res.exit_code, res.stdout_bytes, res.stderr_bytes) == (code, len(payload), len(payload))
