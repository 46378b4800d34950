"""The mould's create arguments, read without an engine (the real-engine check is tests/security/test_mould.py)."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from bottle_mcp.backends.docker.mould import LOG_FILES, LOG_MAX_SIZE, Mould, forwarder


class Recorder:
    """Stands in for docker-py's client: keeps what create_container was given."""

    def __init__(self, engine: str = "Docker Engine") -> None:
        # A client pinned to an API version never contacts the engine to build a host config.
        self.api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
        self.created: dict[str, Any] = {}
        self.api.create_container = self._create  # type: ignore[method-assign,assignment]
        self.engine = engine

    def version(self) -> dict[str, Any]:
        return {"Components": [{"Name": self.engine}]}

    def _create(self, **kw: Any) -> dict[str, str]:
        self.created = kw
        return {"Id": "c0ffee"}


@pytest.mark.parametrize(
    "mould",
    [
        Mould(
            image="i",
            command=["x"],
            name="n",
            user="1:1",
            labels={"a": "b"},
            network_mode="none",
            pids=64,
            memory=2**26,
        ),
        forwarder(
            image="i",
            command=["forward"],
            name="f",
            user="2:2",
            labels={"a": "b"},
            bottle_container_id="abc",
            socket_volume="v",
            socket_dir="/run/x",
        ),
    ],
    ids=["plain", "forwarder"],
)
def test_every_mould_carries_the_whole_hardening(mould: Mould) -> None:
    client = Recorder()
    assert mould.create(client) == "c0ffee"  # type: ignore[arg-type]
    hc = client.created["host_config"]
    assert hc["CapDrop"] == ["ALL"] and "CapAdd" not in hc
    assert hc["SecurityOpt"] == ["no-new-privileges:true"]
    assert (hc["IpcMode"], hc["CgroupnsMode"], hc["Init"], hc["ReadonlyRootfs"]) == ("private", "private", True, True)
    assert hc["PidsLimit"] > 0 and hc["Memory"] == hc["MemorySwap"] > 0
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_FILES}}
    assert client.created["labels"] == {"a": "b"}


def test_a_forwarder_joins_the_bottles_network_namespace_only() -> None:
    client = Recorder()
    forwarder(
        image="i",
        command=["forward"],
        name="f",
        user="2:2",
        labels={},
        bottle_container_id="abc",
        socket_volume="v",
        socket_dir="/run/x",
    ).create(client)  # type: ignore[arg-type]
    hc = client.created["host_config"]
    assert hc["NetworkMode"] == "container:abc"
    assert "PidMode" not in hc and [m["Source"] for m in hc["Mounts"]] == ["v"]


def test_podman_gets_its_own_spelling_of_a_tmpfs_owned_by_the_bottles_user() -> None:
    spec = Mould(
        image="img",
        command=["sleep", "infinity"],
        name="b",
        user="1000:1000",
        labels={},
        network_mode="none",
        pids=64,
        memory=64 << 20,
        tmpfs={"/home/u": "rw,nosuid,size=1024,uid=1000,gid=1000,mode=0700", "/tmp": "rw,size=1024"},
    )
    docker_client, podman_client = Recorder(), Recorder("Podman Engine")
    spec.create(docker_client)  # type: ignore[arg-type]
    spec.create(podman_client)  # type: ignore[arg-type]
    assert docker_client.created["host_config"]["Tmpfs"]["/home/u"] == "rw,nosuid,size=1024,uid=1000,gid=1000,mode=0700"
    assert podman_client.created["host_config"]["Tmpfs"] == {
        "/home/u": "rw,nosuid,size=1024,mode=0700,U",
        "/tmp": "rw,size=1024",
    }
