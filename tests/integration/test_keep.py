"""Kept bottles: a server whose client goes away keeps its bottles and jobs; the next one adopts them.

Real engine, real `bottle-mcp serve` children over stdio, a short grace period. Each test gives its
servers a state folder of their own (XDG_STATE_HOME), so records and leases are the test's alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest

from bottle_mcp import labels as L

from ..conftest import ManifestFactory
from ..reliability.stdio import RawServer

KEEP_FOR = 20


@pytest.fixture
def keep_manifest(write_manifest: ManifestFactory, worker_image: str, tmp_path: Path) -> Path:
    return write_manifest(
        f"""
        [host]
        skills_dir = "{tmp_path}"
        keep_for = "{KEEP_FOR}s"

        [bottles.offline]
        image = "{worker_image}"

        [bottles.offline.resources]
        memory = "256m"
        pids = 128

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def objects_of(client: docker.DockerClient, bottle_id: str) -> list[str]:
    flt = {"label": [f"{L.MANAGED}=true", f"{L.BOTTLE}={bottle_id}"]}
    names = [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters=flt)]
    names += [v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or []]
    names += [n["Name"] for n in client.api.networks(filters=flt)]
    return names


def close_client(server: RawServer) -> None:
    """What a host does when its session ends: close the server's stdin, and wait for it to exit."""
    assert server.proc.stdin is not None
    server.proc.stdin.close()
    server.proc.wait(timeout=10)


def wait_until_gone(client: docker.DockerClient, bottle_id: str, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    left = objects_of(client, bottle_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = objects_of(client, bottle_id)
    return left


def test_next_server_adopts_a_kept_bottle_with_its_file_job_output_and_exit_code(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        (bid,) = a.launch(1)
        wrote = a.ok("exec", {"bottle_id": bid, "command": "echo kept-file > /workspace/note.txt"})
        assert wrote["exit_code"] == 0
        # The job outlives the server: it writes most of its output while no server runs.
        started = a.ok(
            "exec",
            {
                "bottle_id": bid,
                "command": "echo first; sleep 3; seq 1 2000; echo to-stderr >&2; exit 7",
                "background": True,
                "timeout_s": 120,
            },
        )
        job_id = started["job"]["job_id"]
    finally:
        close_client(a)
    assert "kept 1 bottle(s)" in a.proc.stderr.read().decode()  # type: ignore[union-attr]
    names = objects_of(docker_client, bid)
    assert any(n.startswith("bottle-mcp-keep-") for n in names), names
    time.sleep(4)  # the job ends while no server runs

    b = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        listed = {x["bottle_id"]: x for x in b.ok("list_active", {})["bottles"]}
        assert listed[bid]["owner"] == "this-server"
        read = b.ok("exec", {"bottle_id": bid, "command": "cat /workspace/note.txt"})
        assert read["stdout"] == "kept-file\n"
        done = b.ok("wait_job", {"job_id": job_id, "timeout_s": 30})
        assert done["done"] and done["job"]["status"] == "exited" and done["job"]["exit_code"] == 7
        expected = "first\n" + "".join(f"{i}\n" for i in range(1, 2001))
        assert done["stdout"]["text"] == expected
        assert done["stderr"]["text"] == "to-stderr\n"
        jobs = b.ok("list_jobs", {"bottle_id": bid})["jobs"]
        assert [j["job_id"] for j in jobs] == [job_id]
        stopped = b.ok("stop_bottle", {"bottle_id": bid})
        assert stopped["removed"]
    finally:
        close_client(b)
    assert wait_until_gone(docker_client, bid, 10) == []
