"""Fixtures for tests against the real Docker engine (loaded as a plugin by the root conftest).

Every test here is marked `docker` (by the root conftest). The session records the labelled objects
present when it starts and fails if any object created since is left behind
by a server that is gone, so leaks show up as failures, not as clutter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from .conftest import ManifestFactory, engine_client, engine_error

WORKER_IMAGE = "bottle-mcp/worker:latest"


def _managed(client: docker.DockerClient) -> set[str]:
    flt = {"label": [f"{L.MANAGED}=true"]}
    ids = {c["Id"] for c in client.api.containers(all=True, filters=flt)}
    ids |= {v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or []}
    ids |= {n["Id"] for n in client.api.networks(filters=flt)}
    return ids


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    if engine_error() is not None:
        pytest.skip(engine_error() or "")
    client = engine_client()
    before = _managed(client)
    yield client
    leaked = _managed(client) - before
    if leaked:
        # Objects of servers still alive elsewhere are not ours to judge; orphans are leaks.
        me = Instance.current()
        orphaned = []
        for c in client.api.containers(all=True, filters={"label": [f"{L.MANAGED}=true"]}):
            if c["Id"] in leaked and me.liveness_of(c.get("Labels") or {}) == "orphaned":
                orphaned.append(c["Names"][0])
        for v in client.api.volumes(filters={"label": [f"{L.MANAGED}=true"]}).get("Volumes") or []:
            if v["Name"] in leaked and me.liveness_of(v.get("Labels") or {}) == "orphaned":
                orphaned.append(v["Name"])
        for n in client.api.networks(filters={"label": [f"{L.MANAGED}=true"]}):
            if n["Id"] in leaked and me.liveness_of(n.get("Labels") or {}) == "orphaned":
                orphaned.append(n["Name"])
        assert not orphaned, f"the test session leaked labelled engine objects: {orphaned}"
    client.close()


@pytest.fixture(scope="session")
def worker_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(WORKER_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{WORKER_IMAGE} is missing; run scripts/setup.sh (it builds the images)")
    return WORKER_IMAGE


@pytest.fixture
def skills_dir(tmp_path: Path) -> Path:
    d = tmp_path / "skills"
    (d / "review").mkdir(parents=True)
    (d / "review" / "SKILL.md").write_text("# review\nRead the diff and list problems.\n")
    return d


@pytest.fixture
def example_manifest(write_manifest: ManifestFactory, worker_image: str, skills_dir: Path) -> Path:
    return write_manifest(
        f"""
        [host]
        skills_dir = "{skills_dir}"
        keep_for = "0"

        [bottles.offline]
        image = "{worker_image}"

        [bottles.offline.resources]
        memory = "256m"
        pids = 128

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        prompt = "Be brief."
        skills = ["review"]
        """
    )


@pytest.fixture
async def service(example_manifest: Path, tmp_path: Path) -> AsyncIterator[BottleService]:
    """A service on the Docker backend; removes its bottles when the test ends."""
    svc = BottleService(
        ServiceConfig(manifest_path=example_manifest, cwd=tmp_path, host_roots=[tmp_path]),
        DockerBackend(Instance.current()),
    )
    try:
        yield svc
    finally:
        await svc.aclose()


STANDIN_IMAGE = "bottle-mcp/standin:latest"


@pytest.fixture(scope="session")
def standin_image(docker_client: docker.DockerClient) -> str:
    """The test image with a stand-in agent CLI (tests/images/standin)."""
    try:
        docker_client.images.get(STANDIN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{STANDIN_IMAGE} is missing; run scripts/setup.sh (it builds the test images)")
    return STANDIN_IMAGE
