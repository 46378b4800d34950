"""Who owns an engine object, read from its labels: this server, a live one, a dead one, or unknown."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from bottle_mcp import labels as L
from bottle_mcp.labels import Instance


@pytest.fixture
def me() -> Instance:
    return Instance.current()


def owner_of(pid: int, me: Instance) -> str:
    ticks = L._start_ticks(pid)
    assert ticks is not None
    return f"{me.host}/{me.boot_id}/{pid}/{ticks}"


def test_objects_labelled_by_this_instance_belong_to_this_server(me: Instance) -> None:
    assert me.liveness_of(me.labels("bottle")) == "this-server"


def test_labels_carry_the_managed_flag_instance_owner_role_and_extras(me: Instance) -> None:
    labels = me.labels("workspace", **{L.BOTTLE: "b-1"})
    assert labels == {
        L.MANAGED: "true",
        L.INSTANCE: me.id,
        L.OWNER: me.owner,
        L.ROLE: "workspace",
        L.BOTTLE: "b-1",
    }


def test_each_instance_gets_its_own_id_but_the_same_owner_in_one_process() -> None:
    a, b = Instance.current(), Instance.current()
    assert a.id != b.id
    assert a.owner == b.owner


def test_another_instance_in_a_live_process_is_another_server(me: Instance) -> None:
    other = Instance.current()
    assert me.liveness_of(other.labels("bottle")) == "other-server"


def test_a_server_process_that_exits_leaves_orphans(me: Instance) -> None:
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    try:
        labels = {L.INSTANCE: "dead-server", L.OWNER: owner_of(proc.pid, me)}
        assert me.liveness_of(labels) == "other-server"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert me.liveness_of(labels) == "orphaned"


def test_a_reused_pid_with_another_start_time_is_orphaned(me: Instance) -> None:
    host, boot, pid, ticks = me.owner.split("/")
    labels = {L.INSTANCE: "old", L.OWNER: f"{host}/{boot}/{pid}/{int(ticks) + 1}"}
    assert me.liveness_of(labels) == "orphaned"


def test_an_owner_from_an_earlier_boot_is_orphaned(me: Instance) -> None:
    before_reboot = replace(me, id="before-reboot", boot_id="another-boot-id")
    assert me.liveness_of(before_reboot.labels("bottle")) == "orphaned"


def test_an_owner_on_another_host_is_unknown(me: Instance) -> None:
    remote = replace(me, id="remote", host=me.host + "-elsewhere")
    assert me.liveness_of(remote.labels("bottle")) == "unknown"


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {L.INSTANCE: "x"},
        {L.INSTANCE: "x", L.OWNER: ""},
        {L.INSTANCE: "x", L.OWNER: "host/boot/1"},
        {L.INSTANCE: "x", L.OWNER: "a/b/c/d/e"},
    ],
    ids=["no-labels", "no-owner", "empty-owner", "three-parts", "five-parts"],
)
def test_missing_or_malformed_owner_is_unknown(me: Instance, labels: dict[str, str]) -> None:
    assert me.liveness_of(labels) == "unknown"


def test_a_non_numeric_pid_on_this_host_and_boot_is_unknown(me: Instance) -> None:
    labels = {L.INSTANCE: "x", L.OWNER: f"{me.host}/{me.boot_id}/not-a-pid/123"}
    assert me.liveness_of(labels) == "unknown"
