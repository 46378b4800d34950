"""Fixtures of the adversarial suite: real bottles launched through the project, and a fake outside world.

Every module here runs once per runtime the engine has (runc always, runsc when
registered). The "outside world" is two containers of our own running
`world.py`: one answers for the allowed names, the other for a blocked name and
doubles as the TCP/UDP/DNS sink that records any hit. Nothing here sends
traffic anywhere but loopback and these containers.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.backends.docker.egress import EGRESS_IMAGE
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import IN_CI, RUNTIMES_COVERED, engine_client, engine_error

WORLD_SCRIPT = (Path(__file__).parent / "world.py").read_text()
ALLOWED_NAMES = ["allowed.test", "api.allowed.test", "pinned.allowed.test"]
BLOCKED_NAMES = ["blocked.test"]
SECRET_NAME = "BOTTLE_TEST_TOKEN"
DISK_LIMIT = "256m"
SECRET_VALUE = "tok-" + "7" * 8 + secrets.token_hex(12)
PRIVATE_WORLD = ["172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8"]


def _runtimes() -> list[str]:
    if engine_error() is not None:
        return ["runc"]
    client = engine_client()
    try:
        have = set((client.info().get("Runtimes") or {}).keys())
    finally:
        client.close()
    if "runsc" not in have and _gvisor_expected():
        raise pytest.UsageError(
            "CI=true and this machine is expected to run gVisor, but the engine has no runsc runtime "
            f"(it has {sorted(have)}): run scripts/setup.sh, or set BOTTLE_MCP_GVISOR=0 to test under runc alone"
        )
    return ["runc"] + (["runsc"] if "runsc" in have else [])


def _gvisor_expected() -> bool:
    """In CI on the local engine, gVisor is part of what the suite must cover (a remote engine may lack it)."""
    return IN_CI and not os.environ.get("DOCKER_HOST") and os.environ.get("BOTTLE_MCP_GVISOR", "1") == "1"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=_runtimes())
def runtime(request: pytest.FixtureRequest) -> str:
    RUNTIMES_COVERED.add(str(request.param))
    return str(request.param)


@dataclass
class WorldHost:
    container_id: str
    names: list[str]
    ca_pem: str

    def ip_on(self, client: docker.DockerClient, network: str) -> str:
        nets = client.api.inspect_container(self.container_id)["NetworkSettings"]["Networks"]
        return str(nets[network]["IPAddress"])

    def hits(self, client: docker.DockerClient) -> list[str]:
        logs = client.api.logs(self.container_id, stdout=True, stderr=False).decode(errors="replace")
        return [line for line in logs.splitlines() if line.startswith("HIT ")]


@dataclass
class World:
    allowed: WorldHost
    blocked: WorldHost
    network: str

    def attach(self, client: docker.DockerClient, network: str) -> None:
        """Make the world reachable (by name) from a bottle's egress network."""
        client.api.connect_container_to_network(self.allowed.container_id, network, aliases=self.allowed.names)
        client.api.connect_container_to_network(self.blocked.container_id, network, aliases=self.blocked.names)


def _start_world_host(client: docker.DockerClient, network: str, names: list[str], tag: str) -> WorldHost:
    me = Instance.current()
    created = client.api.create_container(
        image=EGRESS_IMAGE,
        entrypoint=["python3", "-c", WORLD_SCRIPT],
        command=names,
        user="0:0",
        labels=me.labels("sidecar", **{L.BOTTLE: f"test-world-{tag}"}),
        host_config=client.api.create_host_config(network_mode=network, init=True),
    )
    cid = str(created["Id"])
    client.api.start(cid)
    # Read its output as it comes: the stream ends if the container dies.
    seen = ""
    for chunk in client.api.logs(cid, stdout=True, stderr=True, stream=True, follow=True):
        seen += chunk.decode(errors="replace")
        if "READY" in seen:
            pem = next(line for line in seen.splitlines() if line.startswith("CA-PEM "))
            return WorldHost(cid, names, base64.b64decode(pem[7:]).decode())
    raise RuntimeError(f"world container {tag} stopped before it was ready: {seen[-500:]}")


@pytest.fixture(scope="session")
def world(docker_client: docker.DockerClient) -> Iterator[World]:
    try:
        docker_client.images.get(EGRESS_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{EGRESS_IMAGE} is missing; run scripts/setup.sh (or `bottle-mcp images`)")
    me = Instance.current()
    net = f"bottle-mcp-test-world-{secrets.token_hex(4)}"
    docker_client.api.create_network(net, labels=me.labels("network", **{L.BOTTLE: "test-world"}))
    hosts: list[WorldHost] = []
    try:
        hosts.append(_start_world_host(docker_client, net, ALLOWED_NAMES, "allowed"))
        hosts.append(_start_world_host(docker_client, net, BLOCKED_NAMES, "blocked"))
        yield World(allowed=hosts[0], blocked=hosts[1], network=net)
    finally:
        for h in hosts:
            docker_client.api.remove_container(h.container_id, force=True)
        docker_client.api.remove_network(net)


def manifest_text(runtime: str, world_ca: Path, skills: Path) -> str:
    return f"""
[host]
skills_dir = "{skills}"
output_cap = "64k"
keep_for = "0"

[bottles.plain]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"

[bottles.plain.resources]
memory = "256m"
pids = 512

[bottles.hog]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"

[bottles.hog.resources]
memory = "96m"
pids = 512

[bottles.disky]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"

[bottles.disky.resources]
memory = "256m"
pids = 512
disk = "{DISK_LIMIT}"

[bottles.net]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"
network = "egress"

[bottles.net.resources]
memory = "256m"
pids = 512

[bottles.net.egress]
allow = ["allowed.test", "*.allowed.test:443"]
passthrough = ["pinned.allowed.test"]
upstream_ca = "{world_ca}"
# The "outside" hosts here are containers of ours on an engine network: private addresses.
allow_private = {PRIVATE_WORLD!r}

[bottles.net.egress.credentials]
{SECRET_NAME} = {{ hosts = ["allowed.test"], body = true }}

[agents.plain]
bottle = "plain"
command = ["true"]

[agents.hog]
bottle = "hog"
command = ["true"]

[agents.disky]
bottle = "disky"
command = ["true"]

[agents.net]
bottle = "net"
command = ["true"]
credentials = ["{SECRET_NAME}"]
"""


@pytest.fixture(scope="module")
def security_manifest(tmp_path_factory: pytest.TempPathFactory, runtime: str, world: World, worker_image: str) -> Path:
    del worker_image  # the fixture checks the image is there
    d = tmp_path_factory.mktemp(f"security-{runtime}")
    (d / "skills").mkdir()
    (d / "world-ca.pem").write_text(world.allowed.ca_pem)
    path = d / "manifest.toml"
    path.write_text(manifest_text(runtime, d / "world-ca.pem", d / "skills"))
    (d / "root").mkdir()
    return path


@pytest.fixture(scope="module")
async def sec_service(security_manifest: Path) -> AsyncIterator[BottleService]:
    """A service with the security manifest; removes its bottles at the end of the module."""
    mp = pytest.MonkeyPatch()
    mp.setenv(SECRET_NAME, SECRET_VALUE)
    root = security_manifest.parent / "root"
    svc = BottleService(
        ServiceConfig(manifest_path=security_manifest, cwd=root, host_roots=[root]),
        DockerBackend(Instance.current()),
    )
    try:
        yield svc
    finally:
        await svc.aclose()
        mp.undo()


PROBES = (Path(__file__).parent / "probes.py").read_bytes()


async def probe(bottle: DockerBottle, name: str, *args: str, env: str = "", timeout_s: float = 60) -> str:
    """Run one function of probes.py inside the bottle as its user; return stdout and stderr."""
    cmd = f"{env} python3 - {name} " + " ".join(shlex.quote(a) for a in args)
    res = await bottle.exec(cmd, timeout_s=timeout_s, workdir=None, output_cap=1 << 20, stdin=PROBES)
    return res.stdout + res.stderr


async def launch(service: BottleService, agent: str) -> DockerBottle:
    plan = await service.prepare(agent)
    result = await service.launch(plan.plan_id)
    bottle = next(b for b in service.live_bottles if b.id == result.bottle_id)
    assert isinstance(bottle, DockerBottle)
    return bottle


@pytest.fixture(scope="module")
async def plain_bottle(sec_service: BottleService) -> DockerBottle:
    return await launch(sec_service, "plain")


@pytest.fixture(scope="module")
async def net_bottle(sec_service: BottleService, world: World, docker_client: docker.DockerClient) -> DockerBottle:
    bottle = await launch(sec_service, "net")
    assert bottle.egress is not None
    world.attach(docker_client, bottle.egress.network_name)
    return bottle
