"""A rootless engine (Podman run by an ordinary user): what it gives a bottle, and what it cannot.

The attack: a rootless engine on a cgroup v1 host (no systemd to delegate controllers) accepts a
container's memory, process and CPU limits and silently drops them, so a bottle launched there
could fork and allocate without bound. bottle-mcp must refuse to launch it, say why in the plan and
in doctor, and leave nothing behind. What rootless does give holds: the bottle's uid 1000 is an
unprivileged host id from the user's subordinate range, and the hardening is the same.

Run by `scripts/rootless-engine.sh test` (CI does), which starts the engine and names its socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.endpoint import resolve
from bottle_mcp.backends.docker.engine import Engine
from bottle_mcp.backends.docker.mould import Mould
from bottle_mcp.errors import BottleError
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

ROOTLESS = os.environ.get("BOTTLE_MCP_ROOTLESS_HOST", "")
USER = os.environ.get("BOTTLE_MCP_ROOTLESS_USER", "bmcp-rootless")
IMAGE = "bottle-mcp/worker:latest"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not ROOTLESS, reason="needs a rootless engine: run scripts/rootless-engine.sh test"),
]


def _client() -> docker.DockerClient:
    return docker.DockerClient(base_url=ROOTLESS, timeout=60)


def _ours(client: docker.DockerClient) -> list[str]:
    flt = {"label": [f"{L.MANAGED}=true"]}
    return [c["Id"] for c in client.api.containers(all=True, filters=flt)] + [
        v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or []
    ]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def test_a_bottle_is_refused_where_its_limits_would_be_dropped(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    manifest = write_manifest(
        f"""
        [host]
        skills_dir = "{tmp_path}"

        [bottles.offline]
        image = "{IMAGE}"
        runtime = "runc"

        [bottles.offline.resources]
        memory = "256m"
        pids = 128
        disk = "unlimited"

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )
    client = _client()
    before = _ours(client)
    engine = Engine(resolve(environ={"DOCKER_HOST": ROOTLESS}))
    backend = DockerBackend(Instance.current(), engine)
    service = BottleService(ServiceConfig(manifest_path=manifest, cwd=tmp_path), backend)
    try:
        plan = await service.prepare("worker")
        assert any("rootless" in w and "launch refuses" in w for w in plan.warnings), plan.warnings
        with pytest.raises(BottleError) as caught:
            await service.launch(plan.plan_id)
        text = str(caught.value)
        assert "rootless" in text and "limits" in text and "docs/engines.md" in text, text
    finally:
        await service.aclose()
    assert _ours(client) == before


def test_doctor_says_no_bottle_can_launch_there_and_how_to_fix_it() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bottle_mcp", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DOCKER_HOST": ROOTLESS},
    )
    assert run.returncode != 0, run.stdout
    limits = next(line for line in run.stdout.splitlines() if "limits:" in line and "disk" not in line)
    assert limits.startswith("[FAIL]") and "rootless" in limits, run.stdout
    assert "cgroup v2" in run.stdout and "delegated" in run.stdout, run.stdout


def test_the_bottles_users_are_unprivileged_host_ids_and_the_hardening_holds() -> None:
    client = _client()
    mould = Mould(
        image=IMAGE,
        command=["sleep", "60"],
        name=None,
        user="1000:1000",
        labels=Instance.current().labels("bottle", **{L.BOTTLE: "rootless-probe"}),
        network_mode="none",
        pids=64,
        memory=256 * 1024**2,
    )
    cid = mould.run(client)
    try:
        pid = int(client.api.inspect_container(cid)["State"]["Pid"])
        status = _status(pid)
        ranges = Path("/etc/subuid").read_text().splitlines()
        start = next(int(line.split(":")[1]) for line in ranges if line.startswith(f"{USER}:"))
        host_uid = int(status["Uid"].split()[0])
        # Container uid 0 is the user itself; uid n > 0 is the n-th id of the user's subordinate range.
        assert host_uid == start + 999, (host_uid, start)
        assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1", status
    finally:
        client.api.remove_container(cid, force=True)
