"""A forwarded credential is found in every part of a request, not just the URL, headers and body.

The credential may go to allowed.test only; each case sends it to api.allowed.test
(also allowed, intercepted) in another part of a request: the method, a header
name, a trailer, an HTTP/2 pseudo-header, the WebSocket upgrade, and as the
CONNECT's own target name (which would go to DNS). The proxy must refuse each,
say why in its log, and the world host must never see the value.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.backends.docker.egress import EGRESS_IMAGE
from bottle_mcp.labels import Instance
from bottle_mcp.models import EgressDecision, EgressLog
from bottle_mcp.service import BottleService

from .conftest import SECRET_NAME, SECRET_VALUE, World, probe

pytestmark = pytest.mark.anyio

HOST = "api.allowed.test"
H = f"Host: {HOST}\\r\\n"
HTTP1 = {
    "method": f"SECRET /m HTTP/1.1\\r\\n{H}Content-Length: 0\\r\\n\\r\\n",
    "header-name": f"GET /hn HTTP/1.1\\r\\n{H}X-SECRET: 1\\r\\n\\r\\n",
    "header-value": f"GET /hv HTTP/1.1\\r\\n{H}X-Note: SECRET\\r\\n\\r\\n",
    "target": f"GET /t?q=SECRET HTTP/1.1\\r\\n{H}\\r\\n",
    "trailer": (
        f"POST /tr HTTP/1.1\\r\\n{H}Transfer-Encoding: chunked\\r\\nTrailer: X-Sig\\r\\n\\r\\n"
        "2\\r\\nhi\\r\\n0\\r\\nX-Sig: SECRET\\r\\n\\r\\n"
    ),
    "websocket-upgrade": (
        f"GET /ws HTTP/1.1\\r\\n{H}Upgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Protocol: SECRET\\r\\n\\r\\n"
    ),
}


async def _decisions(
    service: BottleService, bottle: DockerBottle, wanted: Callable[[EgressDecision], bool]
) -> EgressLog:
    """The egress log once a decision matching `wanted` shows (the proxy's log reaches the engine a bit later)."""
    with anyio.move_on_after(10):
        while True:
            log = await service.egress_log(bottle.id)
            if any(wanted(d) for d in log.decisions):
                return log
            await anyio.sleep(0.2)
    return await service.egress_log(bottle.id)


def _no_secret_reached(world: World, client: docker.DockerClient) -> None:
    # The declared host's own deliveries (the proxy put the real value in place of the stand-in) are not leaks.
    declared = (" /sub-", " /legit ")
    hits = world.allowed.hits(client) + world.blocked.hits(client)
    leaked = [h for h in hits if SECRET_VALUE in h and not any(d in h for d in declared)]
    assert leaked == [], leaked


@pytest.mark.parametrize("part", list(HTTP1))
async def test_a_credential_in_any_part_of_an_http1_request_is_refused(
    sec_service: BottleService, net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient, part: str
) -> None:
    out = await probe(net_bottle, "tunnel_request", HOST, SECRET_NAME, HTTP1[part])
    log = await sec_service.egress_log(net_bottle.id)
    _no_secret_reached(world, docker_client)
    if part == "trailer":
        # mitmproxy 8 (Debian's) does not read HTTP/1.1 request trailers at all: the request never leaves.
        assert " 200 " not in out, out
        return
    assert " 403 " in out, (part, out, log.decisions[-3:])
    log = await _decisions(sec_service, net_bottle, lambda d: d.action == "deny" and SECRET_NAME in d.reason)
    assert any(d.action == "deny" and SECRET_NAME in d.reason for d in log.decisions), log.decisions[-3:]
    assert SECRET_VALUE not in log.model_dump_json()


# Runs the real addon in its image on HTTP/2 requests as mitmproxy hands them over (the test world
# speaks HTTP/1.1 only, so an HTTP/2 client in the bottle would be answered in HTTP/1.1 by the proxy).
H2_CHECK = """
import json, os, sys, types, hashlib
value = sys.argv[1]
os.environ["EGRESS_POLICY"] = json.dumps({
    "allow": [{"pattern": "*.allowed.test", "ports": [443]}],
    "credentials": [{"name": "TOKEN", "prefix": value[:6], "length": len(value),
                     "sha256": hashlib.sha256(value.encode()).hexdigest(), "hosts": ["allowed.test"]}]})
sys.path.insert(0, "/opt/egress")
import egress_addon
from mitmproxy import http
addon = egress_addon.addons[0]
v = value.encode()
cases = {
    "none": dict(method=b"GET", path=b"/ok", headers=[], trailers=None),
    "method": dict(method=v, path=b"/m", headers=[], trailers=None),
    "path": dict(method=b"GET", path=b"/p/" + v, headers=[], trailers=None),
    "header-name": dict(method=b"GET", path=b"/hn", headers=[(b"x-" + v, b"1")], trailers=None),
    "header-value": dict(method=b"GET", path=b"/hv", headers=[(b"x-note", v)], trailers=None),
    "trailer": dict(method=b"POST", path=b"/t", headers=[], trailers=[(b"x-sig", v)]),
}
for name, c in cases.items():
    req = http.Request(b"api.allowed.test", 443, c["method"], b"https", b"api.allowed.test", c["path"],
                       b"HTTP/2.0", http.Headers(c["headers"]), b"", None if c["trailers"] is None
                       else http.Headers(c["trailers"]), 0.0, 0.0)
    flow = types.SimpleNamespace(request=req, response=None, client_conn=types.SimpleNamespace(id="c"))
    addon.request(flow)
    print(name, "refused" if flow.response is not None and flow.response.status_code == 403 else "passed")
"""


def test_a_credential_in_an_http2_request_pseudo_header_header_or_trailer_is_refused(
    docker_client: docker.DockerClient,
) -> None:
    out = docker_client.containers.run(
        EGRESS_IMAGE,
        entrypoint=["python3", "-c", H2_CHECK, SECRET_VALUE],
        network_mode="none",
        labels=Instance.current().labels("sidecar", **{L.BOTTLE: "test-h2-credentials"}),
        remove=True,
        user="10101:10101",
    ).decode()
    results = dict(line.split(" ", 1) for line in out.strip().splitlines() if not line.startswith("EGRESS-LOG"))
    assert results == {
        "none": "passed",
        "method": "refused",
        "path": "refused",
        "header-name": "refused",
        "header-value": "refused",
        "trailer": "refused",
    }, out
    assert SECRET_VALUE not in out  # the addon's own log names the credential, never its value


async def test_a_credential_as_the_connect_target_is_refused_before_any_lookup(
    sec_service: BottleService, net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient
) -> None:
    out = await probe(net_bottle, "tunnel_request", f"{SECRET_VALUE}.allowed.test", SECRET_NAME, "GET / HTTP/1.1")
    assert "CONNECT" in out and " 403 " in out, out
    log = await _decisions(sec_service, net_bottle, lambda d: d.kind == "CONNECT" and SECRET_NAME in d.reason)
    denied = [d for d in log.decisions if d.kind == "CONNECT" and d.action == "deny" and SECRET_NAME in d.reason]
    assert denied, log.decisions[-3:]
    # The log never carries the value itself, not even as the refused host name.
    assert SECRET_VALUE not in log.model_dump_json()
