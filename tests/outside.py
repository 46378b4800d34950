"""The tests' own "outside": scripted HTTPS hosts in containers, and what the engine shows of a bottle.

Nothing here talks to any address but the test's own containers.
"""

from __future__ import annotations

import base64
import json

import docker

from bottle_mcp import labels as L
from bottle_mcp.backends.docker.egress import EGRESS_IMAGE
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import Egress

# The tests' "outside" hosts sit on engine networks (private addresses). Where the proxy refuses
# non-public destinations unless the manifest lists them, the manifests here list these ranges.
ALLOW_PRIVATE = (
    'allow_private = ["172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8"]\n'
    if "allow_private" in Egress.model_fields
    else ""
)


def start_host(
    client: docker.DockerClient, network: str, script: str, names: list[str], env: dict[str, str], tag: str
) -> tuple[str, str]:
    """Run `script NAME...` (printing `CA-PEM <base64>` then `READY`) in the proxy image; (container id, CA PEM)."""
    created = client.api.create_container(
        image=EGRESS_IMAGE,
        entrypoint=["python3", "-c", script],
        command=names,
        user="0:0",
        environment=env,
        labels=Instance.current().labels("sidecar", **{L.BOTTLE: f"test-{tag}"}),
        host_config=client.api.create_host_config(network_mode=network, init=True),
    )
    cid = str(created["Id"])
    client.api.start(cid)
    seen = ""
    for chunk in client.api.logs(cid, stdout=True, stderr=True, stream=True, follow=True):
        seen += chunk.decode(errors="replace")
        if "READY" in seen:
            pem = next(line for line in seen.splitlines() if line.startswith("CA-PEM "))
            return cid, base64.b64decode(pem[7:]).decode()
    raise RuntimeError(f"the {tag} host stopped before it was ready: {seen[-500:]}")


def hits(client: docker.DockerClient, cid: str) -> list[list[str]]:
    """The `HIT ...` lines the host recorded, split into words."""
    logs = client.api.logs(cid, stdout=True, stderr=False).decode(errors="replace")
    return [line.split()[1:] for line in logs.splitlines() if line.startswith("HIT ")]


def engine_view(client: docker.DockerClient, bottle_id: str) -> str:
    """Everything the engine shows of a bottle's objects: inspect, exec inspect, logs, processes."""
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
