"""The host's disk: a bottle that writes without end loses its own space, never the host's.

The attack: fill the workspace (and try the other ways to the host's disk: the container's own
output, the root, /tmp and the home) from inside a bottle whose manifest gives it `disk = "256m"`.
"""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest

from bottle_mcp.backends.docker import disk
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.backends.docker.engine import flavour
from bottle_mcp.manifest import parse_size
from bottle_mcp.service import BottleService

from .conftest import DISK_LIMIT, launch

pytestmark = pytest.mark.anyio

LIMIT = parse_size(DISK_LIMIT)
MIB = 1024**2


@pytest.fixture(scope="module")
async def disky(sec_service: BottleService) -> DockerBottle:
    return await launch(sec_service, "disky")


def _allocated(client: docker.DockerClient, volume: str) -> int:
    """Bytes the engine's disk holds for a volume's files (allocated blocks, not apparent size)."""
    where = Path(client.api.inspect_volume(volume)["Mountpoint"])
    total = 0
    for dirpath, _dirs, names in os.walk(where):
        for n in names:
            total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


async def test_plan_shows_the_disk_limit_and_how_it_is_enforced(
    sec_service: BottleService, docker_client: docker.DockerClient
) -> None:
    plan = await sec_service.prepare("disky")
    assert plan.resources.disk == DISK_LIMIT
    podman = flavour(docker_client) == "podman"
    assert plan.resources.disk_enforced_by == (disk.PODMAN_MECHANISM if podman else disk.MECHANISM)
    work = next(m for m in plan.mounts if m.target == "/workspace")
    assert work.size == DISK_LIMIT


async def test_filling_the_workspace_stops_at_the_limit_and_the_host_loses_at_most_that(
    sec_service: BottleService, disky: DockerBottle, docker_client: docker.DockerClient
) -> None:
    res = await sec_service.exec(disky.id, "df -B1 --output=size,avail /workspace | tail -1")
    size, _avail = (int(x) for x in res.stdout.split())
    assert LIMIT * 0.85 <= size <= LIMIT, res.stdout  # df shows the limit, less the file system's own metadata
    res = await sec_service.exec(
        disky.id, "dd if=/dev/zero of=/workspace/fill bs=1M count=1024 conv=fsync", timeout_s=120
    )
    assert res.exit_code != 0 and "No space left on device" in res.stderr, res.stderr
    res = await sec_service.exec(disky.id, "stat -c %s /workspace/fill")
    written = int(res.stdout)
    assert written <= LIMIT
    # Everything the workspace holds is inside the image file (the work volume is only where it is mounted).
    host = _allocated(docker_client, disk.disk_volume_of(disky.volume))
    print(f"\ndisk limit {LIMIT} B: the bottle wrote {written} B, the host holds {host} B ({host / LIMIT:.3f}x)")
    assert host <= LIMIT + MIB, host
    # Room again once the bottle deletes its own files.
    res = await sec_service.exec(disky.id, "rm /workspace/fill && echo ok > /workspace/after && cat /workspace/after")
    assert res.stdout.strip() == "ok", res.stderr


async def test_no_other_way_to_the_hosts_disk(
    sec_service: BottleService, disky: DockerBottle, docker_client: docker.DockerClient
) -> None:
    # The root file system is read-only; /tmp and the home are tmpfs with a size.
    res = await sec_service.exec(disky.id, "touch /var/tmp/x /x 2>&1; df -B1 --output=size /tmp $HOME | tail -2")
    assert "Read-only file system" in res.stdout, res.stdout
    sizes = [int(x) for x in res.stdout.split()[-2:]]
    assert sizes == [256 * MIB, 256 * MIB], res.stdout
    # The bottle's processes may write to PID 1's output; the engine keeps it on disk, but bounded.
    res = await sec_service.exec(
        disky.id, "head -c 8000000 /dev/zero | tr '\\0' x > /proc/1/fd/1; echo $?", timeout_s=60
    )
    inspect = docker_client.api.inspect_container(disky.container_id)
    log_config = inspect["HostConfig"]["LogConfig"]
    if flavour(docker_client) == "podman":  # its compat answer leaves the options out; its own API has the size
        api = docker_client.api
        own = api.get(f"{api.base_url}/v4.0.0/libpod/containers/{disky.container_id}/json", timeout=30).json()
        assert own["HostConfig"]["LogConfig"]["Size"] == "1MB", own["HostConfig"]["LogConfig"]
        inspect["LogPath"] = own["HostConfig"]["LogConfig"]["Path"]
    else:
        assert log_config["Type"] == "json-file" and log_config["Config"]["max-size"] == disk.BOTTLE_LOG_MAX_SIZE
    log_path = inspect.get("LogPath")
    if log_path and os.path.exists(log_path):
        assert os.path.getsize(log_path) <= 1 * MIB + 64 * 1024, (os.path.getsize(log_path), res.stdout)


async def test_the_disk_goes_with_the_bottle(sec_service: BottleService, docker_client: docker.DockerClient) -> None:
    bottle = await launch(sec_service, "disky")
    volumes = [bottle.volume, disk.disk_volume_of(bottle.volume)]
    for v in volumes:
        docker_client.api.inspect_volume(v)  # both exist, labelled
        assert docker_client.api.inspect_volume(v)["Labels"]["dev.bottle-mcp.bottle"] == bottle.id
    removed = (await sec_service.stop(bottle.id)).removed
    assert {f"volume {v}" for v in volumes} <= set(removed), removed
    for v in volumes:
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.inspect_volume(v)
    helpers = docker_client.api.containers(all=True, filters={"label": f"dev.bottle-mcp.bottle={bottle.id}"})
    assert helpers == []
