"""Warm pools: launches claim started spares, the pool refills, and spares never outlive the server."""

from __future__ import annotations

from pathlib import Path

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

pytestmark = pytest.mark.anyio


async def _wait_for_spares(backend: DockerBackend, n: int) -> set[str]:
    with anyio.fail_after(120):
        while backend.pool.count() < n:  # noqa: ASYNC110 - the pool fills in the background
            await anyio.sleep(0.05)
    return {s.bottle_id for spares in backend.pool._spares.values() for s in spares}


async def test_launch_claims_a_warm_spare_that_behaves_like_a_cold_bottle(
    example_manifest: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    backend = DockerBackend(Instance.current())
    svc = BottleService(
        ServiceConfig(manifest_path=example_manifest, cwd=tmp_path, host_roots=[tmp_path], warm_pool=2), backend
    )
    mine = {"label": [f"{L.INSTANCE}={svc.instance.id}"]}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.keep_warm)
            spares = await _wait_for_spares(backend, 2)
            assert all(b.bottle_id not in spares for b in await svc.list_active()), "spares are not listed"

            plan = await svc.prepare("worker")
            launched = await svc.launch(plan.plan_id)
            assert launched.bottle_id in spares
            res = await svc.exec(launched.bottle_id, "echo $BOTTLE_AGENT; cat ~/.bottle-mcp/prompt.md")
            assert res.stdout == "worker\nBe brief."
            listed = {b.bottle_id: b for b in await svc.list_active()}
            assert listed[launched.bottle_id].agent == "worker"
            assert listed[launched.bottle_id].owner == "this-server"
            (row,) = docker_client.api.containers(filters={"label": [f"{L.BOTTLE}={launched.bottle_id}"]})
            assert row["Names"] == [f"/bottle-mcp-worker-{launched.bottle_id}"]
            hc = docker_client.api.inspect_container(row["Id"])["HostConfig"]  # (Podman's list has no HostConfig)
            assert hc["NetworkMode"] == "none"

            refilled = await _wait_for_spares(backend, 2)
            assert launched.bottle_id not in refilled
            tg.cancel_scope.cancel()
        # Cancelled: the spares are gone, the claimed bottle stays until the server stops.
        names = [c["Names"][0] for c in docker_client.api.containers(all=True, filters=mine)]
        assert names == [f"/bottle-mcp-worker-{launched.bottle_id}"]
    finally:
        await svc.aclose()
    assert docker_client.api.containers(all=True, filters=mine) == []
    assert not (docker_client.api.volumes(filters=mine)["Volumes"] or [])
