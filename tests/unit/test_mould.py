"""The mould's create arguments, read without an engine (the real-engine check is tests/security/test_mould.py)."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from bottle_mcp.backends.docker.mould import LOG_FILES, LOG_MAX_SIZE, Mould, forwarder


class Recorder:
    """Stands in for docker-py's client: keeps what create_container was given."""

    def __init__(self) -> None:
        # A client pinned to an API version never contacts the engine to build a host config.
        self.api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
        self.created: dict[str, Any] = {}
        self.api.create_container = self._create  # type: ignore[method-assign,assignment]

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
