"""Crash safety: a server killed with SIGKILL leaves bottles the next one finds; a clean stop leaves none."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import docker

from bottle_mcp import labels as L

from .stdio import RawServer


def _ours(client: docker.DockerClient, instance: str) -> list[str]:
    flt = {"label": [f"{L.INSTANCE}={instance}"]}
    names = [c["Names"][0] for c in client.api.containers(all=True, filters=flt)]
    return names + [v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or []]


def test_bottles_of_a_killed_server_are_reported_and_cleaned_up_by_the_next(
    example_manifest: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    first = RawServer(example_manifest, tmp_path, "--warm-pool", "1")
    try:
        ids = first.launch(10)
        dead = first.ok("list_active", {})["this_server"]
    finally:
        first.kill()  # SIGKILL: no chance to clean up
    assert len([n for n in _ours(docker_client, dead) if "warm" not in n]) >= 20  # 10 containers + 10 volumes

    second = RawServer(example_manifest, tmp_path)
    try:
        listed = {b["bottle_id"]: b["owner"] for b in second.ok("list_active", {})["bottles"]}
        assert {bid: listed.get(bid) for bid in ids} == dict.fromkeys(ids, "orphaned")
        preview = second.ok("cleanup", {"dry_run": True})
        assert {i["bottle_id"] for i in preview["removed"]} >= set(ids)
        report = second.ok("cleanup", {})
        assert report["failed"] == []
        assert _ours(docker_client, dead) == []
    finally:
        second.proc.stdin.close()  # type: ignore[union-attr]
        second.proc.wait(timeout=10)
    stderr = second.stderr_text()
    assert "left by servers that are gone" in stderr


def test_clean_shutdown_leaves_nothing_within_the_hosts_budget(
    example_manifest: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    server = RawServer(example_manifest, tmp_path, "--warm-pool", "2")
    try:
        server.launch(10)
        me = server.ok("list_active", {})["this_server"]
        # What hosts do: close stdin, and SIGTERM when the server is still there 2 s later.
        server.proc.stdin.close()  # type: ignore[union-attr]
        started = time.monotonic()
        try:
            server.proc.wait(timeout=2)
        except Exception:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=2)
        took = time.monotonic() - started
    finally:
        server.kill()
    left = _ours(docker_client, me)
    assert left == [], f"left after {took:.1f} s: {left}"
