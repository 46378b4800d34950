"""The proxy connects to public destinations only, unless the manifest allows a private one.

Allowed names here answer (in the sidecar's own resolver) with the host's
addresses: the egress network's gateway, docker0, the host's other interfaces,
and an IPv4-mapped IPv6 spelling of the gateway; another name is a container of
ours on a private engine network. A listener on the host's 0.0.0.0 (moby #47356)
and the world container record whoever reaches them. Each destination is tried
as plain HTTP, as a CONNECT tunnel (what HTTPS and HTTP/2 ride in) and as a
WebSocket upgrade: all three go through the one check on the address the proxy
actually connects to. The same names are reached once allow_private names them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.backends.docker.mould import Mould
from bottle_mcp.backends.docker.netguard import host_addresses
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from .conftest import World, launch, probe

pytestmark = pytest.mark.anyio


class HttpListener:
    """An HTTP answer on the host's 0.0.0.0; records the request line of whoever connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.hits: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.hits.append(conn.recv(4096).split(b"\r\n")[0].decode(errors="replace"))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\nhost-reached!\n")
                except OSError:
                    pass


@pytest.fixture(scope="module")
def listener() -> Iterator[HttpListener]:
    lst = HttpListener()
    yield lst
    lst.sock.close()


def _manifest(runtime: str, port: int, allow_private: list[str]) -> str:
    return f"""
[bottles.reach]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"
network = "egress"

[bottles.reach.resources]
memory = "256m"
pids = 512

[bottles.reach.egress]
allow = ["*.reach.test", "*.reach.test:{port}"]
{f"allow_private = {allow_private!r}" if allow_private else ""}

[agents.reach]
bottle = "reach"
command = ["true"]
"""


def _docker0(client: docker.DockerClient) -> str | None:
    for net in client.api.networks(names=["bridge"]):
        for conf in (net.get("IPAM") or {}).get("Config") or []:
            if conf.get("Gateway"):
                return str(conf["Gateway"])
    return None


async def _reach_bottle(
    tmp: Path, runtime: str, port: int, allow_private: list[str], client: docker.DockerClient, world: World
) -> AsyncIterator[tuple[BottleService, DockerBottle, dict[str, str]]]:
    (tmp / "manifest.toml").write_text(_manifest(runtime, port, allow_private))
    answers: dict[str, str] = {}
    original = Mould.host_config

    def with_answers(self: Mould, c: docker.DockerClient) -> Any:
        config = original(self, c)
        if self.network_mode.endswith("-egress"):  # the sidecar: its resolver gives the host's addresses
            gateway = c.api.inspect_network(self.network_mode)["IPAM"]["Config"][0]["Gateway"]
            answers["gw.reach.test"] = gateway
            answers["mapped.reach.test"] = f"::ffff:{gateway}"
            docker0 = _docker0(c)
            if docker0:
                answers["docker0.reach.test"] = docker0
            others = [a for a in host_addresses() if "." in a and not a.startswith("127.") and a != docker0]
            if others:
                answers["eth.reach.test"] = others[0]
            config["ExtraHosts"] = [f"{name}:{ip}" for name, ip in answers.items()]
        return config

    mp = pytest.MonkeyPatch()
    mp.setattr(Mould, "host_config", with_answers)
    svc = BottleService(ServiceConfig(manifest_path=tmp / "manifest.toml", cwd=tmp), DockerBackend(Instance.current()))
    try:
        bottle = await launch(svc, "reach")
        mp.undo()
        assert bottle.egress is not None
        client.api.connect_container_to_network(
            world.blocked.container_id, bottle.egress.network_name, aliases=["private.reach.test"]
        )
        answers["private.reach.test"] = world.blocked.ip_on(client, bottle.egress.network_name)
        yield svc, bottle, answers
    finally:
        mp.undo()
        await svc.aclose()


@pytest.fixture(scope="module")
async def refusing(
    tmp_path_factory: pytest.TempPathFactory,
    runtime: str,
    listener: HttpListener,
    docker_client: docker.DockerClient,
    world: World,
) -> AsyncIterator[tuple[BottleService, DockerBottle, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp(f"reach-{runtime}")
    async for made in _reach_bottle(tmp, runtime, listener.port, [], docker_client, world):
        yield made


def _requests(name: str, port: int) -> dict[str, str]:
    return {
        "http": f"GET http://{name}:{port}/plain HTTP/1.1\\r\\nHost: {name}:{port}\\r\\n\\r\\n",
        "connect": f"CONNECT {name}:{port} HTTP/1.1\\r\\nHost: {name}:{port}\\r\\n\\r\\n",
        "websocket": (
            f"GET http://{name}:{port}/ws HTTP/1.1\\r\\nHost: {name}:{port}\\r\\nUpgrade: websocket\\r\\n"
            "Connection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n"
        ),
    }


async def test_allowed_names_that_resolve_to_the_host_or_a_private_address_are_refused_for_every_protocol(
    refusing: tuple[BottleService, DockerBottle, dict[str, str]],
    listener: HttpListener,
    world: World,
    docker_client: docker.DockerClient,
) -> None:
    svc, bottle, answers = refusing
    assert {"gw.reach.test", "mapped.reach.test", "private.reach.test"} <= set(answers), answers
    before, world_before = len(listener.hits), len(world.blocked.hits(docker_client))
    for name, address in answers.items():
        port = 80 if name.startswith("private.") else listener.port
        for proto, request in _requests(name, port).items():
            out = await probe(bottle, "raw_proxy", request)
            assert " 200 " not in out and " 101 " not in out, (name, address, proto, out)
    assert listener.hits[before:] == [], listener.hits
    assert not any("/plain" in h or "/ws" in h for h in world.blocked.hits(docker_client)[world_before:])
    log = await svc.egress_log(bottle.id)
    refused = {d.host for d in log.decisions if d.action == "deny" and "may not reach" in d.reason}
    assert refused >= set(answers), (refused, [d.reason for d in log.decisions])


async def test_allow_private_lets_the_named_ranges_through_and_the_plan_shows_them(
    tmp_path: Path, runtime: str, listener: HttpListener, docker_client: docker.DockerClient, world: World
) -> None:
    allow = ["0.0.0.0/0", "[::/0]"]  # everything: the test's own host and containers only
    async for svc, bottle, answers in _reach_bottle(tmp_path, runtime, listener.port, allow, docker_client, world):
        plan = await svc.prepare("reach")
        assert plan.network.allow_private == allow
        out = await probe(bottle, "raw_proxy", _requests("gw.reach.test", listener.port)["http"])
        assert " 200 " in out, out
        assert any("/plain" in h for h in listener.hits), listener.hits
        out = await probe(bottle, "raw_proxy", _requests("private.reach.test", 80)["http"])
        assert " 200 " in out, (answers, out)
