"""Every container a bottle brings (bottle, egress proxy and forwarder, git gate and forwarder) is hardened alike.

One bottle with an egress proxy and a git/ssh gate is launched per runtime; then every
container carrying that bottle's label is inspected, and each must show the same posture:
all capabilities dropped (none added), no-new-privileges, private cgroup and IPC
namespaces, a read-only root, pids and memory limits, a log that cannot grow without
bound, and the project's labels. A second test floods the bottle's own log from inside
(an agent can write to its container's stdout) and checks the engine keeps only a bounded
amount of it.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.mould import LOG_FILES, LOG_MAX_SIZE
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import parse_size
from bottle_mcp.service import BottleService, ServiceConfig

from .test_gates import World, gate_manifest, ssh_worker_image, upstream_image, world

pytestmark = pytest.mark.anyio

__all__ = ["ssh_worker_image", "upstream_image", "world"]  # fixtures shared with the gate tests

FLOOD_BYTES = 48 * 1024**2


@dataclass
class Launched:
    service: BottleService
    bottle_id: str


@pytest.fixture(scope="module")
async def launched(
    world: World, ssh_worker_image: str, tmp_path_factory: pytest.TempPathFactory, runtime: str
) -> AsyncIterator[Launched]:
    del ssh_worker_image  # the fixture builds the image the manifest names
    home = tmp_path_factory.mktemp("mould")
    manifest = home / "manifest.toml"
    manifest.write_text(textwrap.dedent(gate_manifest(world, git_pin=world.upstream_key, runtime=runtime, egress=True)))
    svc = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=home, host_roots=[home]),
        DockerBackend(Instance.current(), gate_network=world.network),
    )
    try:
        with anyio.fail_after(240):
            plan = await svc.prepare("pusher")
            bottle_id = (await svc.launch(plan.plan_id)).bottle_id
        yield Launched(svc, bottle_id)
    finally:
        await svc.aclose()


def _containers(client: docker.DockerClient, bottle_id: str) -> list[dict[str, Any]]:
    rows = client.api.containers(all=True, filters={"label": [f"{L.BOTTLE}={bottle_id}"]})
    return [client.api.inspect_container(r["Id"]) for r in rows]


def _posture(attrs: dict[str, Any]) -> dict[str, object]:
    hc = attrs["HostConfig"]
    log = hc.get("LogConfig") or {}
    opts = log.get("Config") or {}
    bounded = log.get("Type") == "local" or (
        log.get("Type") == "json-file" and "max-size" in opts and "max-file" in opts
    )
    return {
        "cap_drop": hc.get("CapDrop"),
        "cap_add": hc.get("CapAdd") or [],
        "privileged": hc.get("Privileged"),
        "no_new_privileges": "no-new-privileges:true" in (hc.get("SecurityOpt") or []),
        "cgroupns": hc.get("CgroupnsMode"),
        "ipc": hc.get("IpcMode"),
        "read_only_root": hc.get("ReadonlyRootfs"),
        "pids_limited": (hc.get("PidsLimit") or 0) > 0,
        "memory_limited": (hc.get("Memory") or 0) > 0 and hc.get("MemorySwap") == hc.get("Memory"),
        "init": hc.get("Init"),
        "bounded_log": bounded,
        "pid_mode": hc.get("PidMode") or "",
        "labelled": attrs["Config"]["Labels"].get(L.MANAGED) == "true" and L.INSTANCE in attrs["Config"]["Labels"],
    }


WANTED = {
    "cap_drop": ["ALL"],
    "cap_add": [],
    "privileged": False,
    "no_new_privileges": True,
    "cgroupns": "private",
    "ipc": "private",
    "read_only_root": True,
    "pids_limited": True,
    "memory_limited": True,
    "init": True,
    "bounded_log": True,
    "pid_mode": "",
    "labelled": True,
}


async def test_every_container_of_a_bottle_has_the_same_posture(
    launched: Launched, docker_client: docker.DockerClient
) -> None:
    found = _containers(docker_client, launched.bottle_id)
    kinds = {a["Config"]["Labels"].get(L.ROLE, "?") + ":" + a["Name"].rsplit(launched.bottle_id, 1)[-1] for a in found}
    # The bottle, the egress proxy and its forwarder, the gate and its forwarder.
    assert kinds == {"bottle:", "sidecar:-egress-proxy", "sidecar:-egress-fwd", "sidecar:-gate", "sidecar:-gate-fwd"}
    for attrs in found:
        assert _posture(attrs) == WANTED, attrs["Name"]


async def test_a_flood_on_the_bottles_output_keeps_the_engines_log_bounded(
    launched: Launched, docker_client: docker.DockerClient
) -> None:
    # The bottle's first process is the container's stdout: anything in the bottle running as
    # the bottle's user can write there, and the engine keeps what it gets on the host's disk.
    res = await launched.service.exec(
        launched.bottle_id,
        f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x | fold -w 4000 > /proc/1/fd/1; echo $?",
        timeout_s=180,
    )
    assert res.stdout.strip() == "0", (res.stdout, res.stderr)
    (bottle,) = [a for a in _containers(docker_client, launched.bottle_id) if a["Config"]["Labels"][L.ROLE] == "bottle"]
    bound = parse_size(LOG_MAX_SIZE) * int(LOG_FILES) + 64 * 1024
    kept = len(docker_client.api.logs(bottle["Id"], stdout=True, stderr=True))
    assert 0 < kept <= bound
    log_path = Path(bottle.get("LogPath") or "")
    if log_path.is_file():  # the engine's files themselves, when this machine can see them
        on_disk = sum(p.stat().st_size for p in log_path.parent.glob(log_path.name + "*"))
        assert on_disk <= 2 * bound  # the engine's JSON framing adds to every line
