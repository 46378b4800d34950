"""Egress: the allow-listed host is reachable through the proxy, everything else is refused or unroutable.

The hostile agent is played by probes.py run inside the bottle. It uses the
proxy the polite way, then with every trick on the security checklist, then
without the proxy at all (raw TCP, UDP, DNS, IPv6, the host's address).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.approval import elevations
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.backends.docker.egress import EGRESS_IMAGE, EgressStack
from bottle_mcp.errors import BottleNotFoundError, EngineError, LaunchError
from bottle_mcp.labels import Instance
from bottle_mcp.models import CleanupPlan
from bottle_mcp.service import BottleService, ServiceConfig

from .conftest import PRIVATE_WORLD, SECRET_NAME, SECRET_VALUE, World, launch, probe

pytestmark = pytest.mark.anyio

NO_PROXY_ENV = "env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy"


async def test_plan_shows_the_egress_policy_before_launch(sec_service: BottleService) -> None:
    plan = await sec_service.prepare("net")
    net = plan.network
    assert (net.mode, net.effective) == ("egress", "egress-proxy")
    assert net.egress_allow == ["allowed.test", "*.allowed.test:443"]
    assert net.intercepted == ["allowed.test", "*.allowed.test"]
    assert net.passthrough == ["pinned.allowed.test"]
    assert net.credential_hosts == {SECRET_NAME: ["allowed.test"]}
    assert net.allow_private == PRIVATE_WORLD
    assert any("non-public destination 10.0.0.0/8" in e for e in elevations(plan))
    assert any("pinned.allowed.test is passed through" in w for w in plan.warnings)


async def test_allowed_host_is_reachable_over_https_and_http_through_the_proxy(net_bottle: DockerBottle) -> None:
    out = await probe(net_bottle, "fetch", "https://allowed.test/hello")
    assert "hello from allowed.test host=allowed.test path=/hello" in out, out
    out = await probe(net_bottle, "fetch", "http://allowed.test/plain")
    assert "path=/plain" in out, out
    out = await probe(net_bottle, "fetch", "https://api.allowed.test/wild")
    assert "path=/wild" in out, out


BYPASSES = {
    "connect-blocked": ("CONNECT blocked.test:443 HTTP/1.1\\r\\nHost: blocked.test:443\\r\\n\\r\\n", ""),
    "http-blocked": ("GET http://blocked.test/ HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n", ""),
    "connect-mixed-case": ("CONNECT ALLOWED.test:443 HTTP/1.1\\r\\n\\r\\n", ""),
    "http-mixed-case": ("GET http://Allowed.Test/ HTTP/1.1\\r\\nHost: Allowed.Test\\r\\n\\r\\n", ""),
    "connect-trailing-dot": ("CONNECT allowed.test.:443 HTTP/1.1\\r\\n\\r\\n", ""),
    "http-trailing-dot": ("GET http://allowed.test./ HTTP/1.1\\r\\nHost: allowed.test.\\r\\n\\r\\n", ""),
    "http-userinfo": ("GET http://allowed.test@blocked.test/ HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n", ""),
    "http-userinfo-port": ("GET http://allowed.test:80@blocked.test/ HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n", ""),
    "connect-other-port": ("CONNECT allowed.test:8080 HTTP/1.1\\r\\n\\r\\n", ""),
    "http-other-port": ("GET http://allowed.test:8080/ HTTP/1.1\\r\\nHost: allowed.test:8080\\r\\n\\r\\n", ""),
    "wildcard-not-on-port-80": ("CONNECT api.allowed.test:80 HTTP/1.1\\r\\n\\r\\n", ""),
    "parent-domain": ("CONNECT test:443 HTTP/1.1\\r\\n\\r\\n", ""),
    "lookalike-suffix": ("CONNECT evilallowed.test:443 HTTP/1.1\\r\\n\\r\\n", ""),
    "host-header-mismatch": ("GET http://allowed.test/ HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n", ""),
    "tunnel-host-header-mismatch": ("CONNECT allowed.test:443 HTTP/1.1\\r\\n\\r\\n", "blocked.test"),
}


@pytest.mark.parametrize("case", list(BYPASSES))
async def test_allow_list_bypass_attempts_are_refused(
    net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient, case: str
) -> None:
    request, tls_host = BYPASSES[case]
    out = await probe(net_bottle, "raw_proxy", request, tls_host)
    last = out.rsplit("|", 1)[-1]
    assert " 200 " not in last and (" 403 " in last or " 400 " in last or "Error" in last), out
    assert not any("blocked.test" in h for h in world.blocked.hits(docker_client) if h.startswith("HIT http"))


async def test_ip_literals_are_refused_for_connect_and_http(
    net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient
) -> None:
    assert net_bottle.egress is not None
    ip = world.allowed.ip_on(docker_client, net_bottle.egress.network_name)
    for request in (
        f"CONNECT {ip}:443 HTTP/1.1\\r\\n\\r\\n",
        f"GET http://{ip}/ip-literal HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
        f"CONNECT [::ffff:{ip}]:443 HTTP/1.1\\r\\n\\r\\n",
    ):
        out = await probe(net_bottle, "raw_proxy", request)
        assert " 403 " in out or " 400 " in out, (request, out)
    assert not any("/ip-literal" in h for h in world.allowed.hits(docker_client))


async def test_forwarded_credential_going_to_another_host_is_refused_and_logged(
    sec_service: BottleService, net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient
) -> None:
    out = await probe(net_bottle, "post_credential", "https://api.allowed.test/exfil", SECRET_NAME)
    assert "403" in out, out
    out = await probe(net_bottle, "post_credential", "http://allowed.test:80/legit", SECRET_NAME)
    assert out.strip() == "200", out
    hits = world.allowed.hits(docker_client)
    assert not any("/exfil" in h for h in hits)
    # The declared host gets the real value in place of the bottle's stand-in (bodies: body = true).
    assert any("/legit" in h and f"token={SECRET_VALUE}" in h for h in hits)
    log = await sec_service.egress_log(net_bottle.id)
    denied = [d for d in log.decisions if d.action == "deny" and d.path == "/exfil"]
    assert denied and SECRET_NAME in denied[0].reason
    assert SECRET_VALUE not in log.model_dump_json()


async def test_passthrough_host_keeps_its_own_certificate_and_others_are_intercepted(
    net_bottle: DockerBottle, world: World
) -> None:
    # Trusting only the world's CA, the handshake works only where the proxy does not intercept.
    out = await probe(net_bottle, "tunnel_with_ca", "pinned.allowed.test", world.allowed.ca_pem)
    assert "200 OK" in out and "path=/pinned" in out, out
    out = await probe(net_bottle, "tunnel_with_ca", "api.allowed.test", world.allowed.ca_pem)
    assert "CERTIFICATE_VERIFY_FAILED" in out, out


async def test_raw_bytes_in_an_intercepted_tunnel_do_not_reach_the_host(
    sec_service: BottleService, net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient
) -> None:
    # Port 80 of the allowed host records any bytes it receives, HTTP or not.
    await probe(net_bottle, "raw_tunnel", "allowed.test", "80")
    assert not any("raw-tunnel-payload" in h for h in world.allowed.hits(docker_client))
    log = await sec_service.egress_log(net_bottle.id)
    assert any(d.action == "deny" and d.kind == "tunnel" for d in log.decisions)


class HostListener:
    """A TCP listener on the host's 0.0.0.0, the case of moby #47356; records whoever connects."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen()
        self.hits: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.hits.append(str(peer))
            conn.close()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.sock.close()


async def test_without_the_proxy_nothing_leaves_the_bottle(
    net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient
) -> None:
    assert net_bottle.egress is not None
    net = net_bottle.egress.network_name
    sink_ip = world.blocked.ip_on(docker_client, net)
    gateway = docker_client.api.inspect_network(net)["IPAM"]["Config"][0]["Gateway"]
    nonce = f"nonce-{net_bottle.id}.blocked.test"
    listener = HostListener()
    with listener as port:
        out = await probe(net_bottle, "no_proxy_escape", sink_ip, gateway, str(port), nonce, env=NO_PROXY_ENV)
    assert not listener.hits, f"a host service was reached from the bottle: {listener.hits}"
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if " " in line)
    assert lines.get("ifaces") == "lo", out
    assert lines.get("v6addrs", "").count(",") == 0 and "fe80" not in out, out
    for key in ("tcp", "tcp80", "v6", "gateway"):
        assert lines[key] != "OPEN", out
    for key in ("udp", "dns53"):
        assert lines[key] != "SENT", out
    assert not lines["lookup"].startswith("RESOLVED"), out
    assert not lines["lookup-allowed"].startswith("RESOLVED"), out
    hits = world.blocked.hits(docker_client) + world.allowed.hits(docker_client)
    assert not any("leak" in h or "nonce-" in h for h in hits), hits


async def test_egress_log_records_allow_and_deny(sec_service: BottleService, net_bottle: DockerBottle) -> None:
    await probe(net_bottle, "raw_proxy", "GET http://allowed.test/logged HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n")
    await probe(net_bottle, "raw_proxy", "GET http://blocked.test/logged HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n")
    log = await sec_service.egress_log(net_bottle.id)
    assert log.allow == ["allowed.test", "*.allowed.test:443"]
    mine = [(d.action, d.host) for d in log.decisions if d.path == "/logged"]
    assert ("allow", "allowed.test") in mine and ("deny", "blocked.test") in mine
    assert log.total >= len(log.decisions)
    limited = await sec_service.egress_log(net_bottle.id, limit=1)
    assert len(limited.decisions) == 1 and limited.decisions[0] == log.decisions[-1]


def _objects_of(client: docker.DockerClient, label: str) -> list[tuple[str, str]]:
    """(kind, role) of every engine object carrying the label."""
    flt = {"label": [label]}
    found = [("container", c["Labels"][L.ROLE]) for c in client.api.containers(all=True, filters=flt)]
    found += [("volume", v["Labels"][L.ROLE]) for v in client.api.volumes(filters=flt).get("Volumes") or []]
    found += [("network", n["Labels"][L.ROLE]) for n in client.api.networks(filters=flt)]
    return sorted(found)


async def test_exec_and_listing_cannot_reach_the_sidecars(
    sec_service: BottleService, net_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    flt = {"label": [f"{L.BOTTLE}={net_bottle.id}", f"{L.ROLE}=sidecar"]}
    sidecars = docker_client.api.containers(filters=flt)
    assert len(sidecars) == 2
    for row in sidecars:
        for name in (row["Id"], row["Id"][:12], row["Names"][0].lstrip("/")):
            with pytest.raises(BottleNotFoundError):
                await sec_service.exec(name, "id")
            with pytest.raises(BottleNotFoundError):
                await sec_service.egress_log(name)
    listed = {b.bottle_id for b in await sec_service.list_active() if b.bottle_id == net_bottle.id}
    assert listed == {net_bottle.id}
    assert len([b for b in await sec_service.list_active() if b.bottle_id == net_bottle.id]) == 1


async def test_proxy_network_and_volumes_carry_the_labels_and_go_with_the_bottle(
    sec_service: BottleService, docker_client: docker.DockerClient
) -> None:
    bottle = await launch(sec_service, "net")
    label = f"{L.BOTTLE}={bottle.id}"
    assert _objects_of(docker_client, label) == [
        ("container", "bottle"),
        ("container", "sidecar"),
        ("container", "sidecar"),
        ("network", "network"),
        ("volume", "sidecar"),
        ("volume", "workspace"),
        ("volume", "workspace"),  # the image file behind the workspace's file system (the disk limit)
    ]
    for row in docker_client.api.containers(filters={"label": [label]}):
        assert row["Labels"][L.INSTANCE] == sec_service.instance.id
    # The sidecars are hardened like the bottle.
    for row in docker_client.api.containers(filters={"label": [label, f"{L.ROLE}=sidecar"]}):
        hc = docker_client.api.inspect_container(row["Id"])["HostConfig"]
        assert hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"] and "no-new-privileges:true" in hc["SecurityOpt"]
    result = await sec_service.stop(bottle.id)
    assert any("egress proxy" in r for r in result.removed)
    assert _objects_of(docker_client, label) == []


async def test_failed_launch_removes_the_proxy_and_its_network(
    security_manifest: Path, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = EgressStack.start_forwarder

    async def broken(self: EgressStack, bottle_container_id: str) -> None:
        await real(self, bottle_container_id)
        raise EngineError("injected failure after the forwarder started")

    monkeypatch.setattr(EgressStack, "start_forwarder", broken)
    svc = BottleService(ServiceConfig(manifest_path=security_manifest), DockerBackend(Instance.current()))
    try:
        plan = await svc.prepare("net")
        with pytest.raises(LaunchError, match="injected"):
            await svc.launch(plan.plan_id)
        assert _objects_of(docker_client, f"{L.INSTANCE}={svc.instance.id}") == []
    finally:
        await svc.aclose()


async def test_cleanup_finds_the_proxy_and_network_of_a_server_that_is_gone(
    sec_service: BottleService, security_manifest: Path, docker_client: docker.DockerClient
) -> None:
    gone = await anyio.run_process(["sh", "-c", "echo $$"])
    me = Instance.current()
    ghost = Instance(id="ghost" + me.id[:6], host=me.host, boot_id=me.boot_id, pid=int(gone.stdout), start_ticks="1")
    svc = BottleService(ServiceConfig(manifest_path=security_manifest), DockerBackend(ghost))
    bottle = await launch(svc, "net")
    await svc.backend.aclose()  # the ghost server "crashes": its objects stay behind
    label = f"{L.BOTTLE}={bottle.id}"
    assert len(_objects_of(docker_client, label)) == 7  # with the workspace's disk volume
    found = await sec_service.backend.prepare_cleanup()
    mine = CleanupPlan(remove=[i for i in found.remove if i.bottle_id == bottle.id], keep=[])
    assert sorted(i.kind for i in mine.remove) == ["container"] * 3 + ["network"] + ["volume"] * 3
    report = await sec_service.backend.cleanup(mine)
    assert not report.failed, report.failed
    assert _objects_of(docker_client, label) == []


# Runs inside the proxy image: a name on the allow-list that resolves to the host, loopback, link-local
# (DNS rebinding, cloud metadata), a private or CGNAT address, a public address of the host or an engine
# network, in any IPv6 spelling, is refused at connect time by the real addon. Nothing is connected to.
REBIND_CHECK = """
import json, os, socket, sys, types
os.environ["EGRESS_POLICY"] = json.dumps({"allow": [{"pattern": "*.rebind.test", "ports": [443]}],
                                          "allow_private": ["10.9.0.0/16:443"],
                                          "deny_addresses": ["198.51.100.0/24", "9.9.0.0/16"]})
sys.path.insert(0, "/opt/egress")
import egress_addon
addon = egress_addon.addons[0]
gateway = sorted(addon.gateways)[0]
answers = {"gw.rebind.test": gateway, "lo.rebind.test": "127.0.0.1", "meta.rebind.test": "169.254.169.254",
           "priv.rebind.test": "192.168.4.4", "cgnat.rebind.test": "100.64.0.9", "mcast.rebind.test": "239.1.2.3",
           "zero.rebind.test": "0.0.0.0", "doc.rebind.test": "203.0.113.7", "engine.rebind.test": "9.9.4.4",
           "mapped.rebind.test": "::ffff:" + gateway, "nat64.rebind.test": "64:ff9b::a00:1",
           "sixtofour.rebind.test": "2002:c0a8:101::1", "ula.rebind.test": "fd00::5", "v6lo.rebind.test": "::1",
           "allowed-private.rebind.test": "10.9.3.3", "ok.rebind.test": "9.8.7.6"}
def fake(host, port, **kw):
    family = socket.AF_INET6 if ":" in answers[host] else socket.AF_INET
    return [(family, socket.SOCK_STREAM, 6, "", (answers[host], port))]
socket.getaddrinfo = fake
for name in answers:
    server = types.SimpleNamespace(address=(name, 443), sni=None, error=None)
    addon.server_connect(types.SimpleNamespace(server=server, client=None))
    print(name, "refused" if server.error else "allowed " + server.address[0])
"""


async def test_allowed_names_resolving_to_the_host_loopback_or_link_local_are_refused(
    docker_client: docker.DockerClient, world: World
) -> None:
    out = docker_client.containers.run(
        EGRESS_IMAGE,
        entrypoint=["python3", "-c", REBIND_CHECK],
        network=world.network,  # a bridge network, so the sidecar has a gateway as in real use
        labels=Instance.current().labels("sidecar", **{L.BOTTLE: "test-rebind"}),
        remove=True,
        user="10101:10101",
    ).decode()
    results = dict(line.split(" ", 1) for line in out.strip().splitlines() if not line.startswith("EGRESS-LOG"))
    allowed = {"ok.rebind.test": "allowed 9.8.7.6", "allowed-private.rebind.test": "allowed 10.9.3.3"}
    assert results == {name: allowed.get(name, "refused") for name in results}, out
    assert len(results) == 16, out
