"""doctor against the real engine: what is there is ok, what is missing says how to get it."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.cli import main
from bottle_mcp.doctor import DoctorReport, run_doctor
from bottle_mcp.labels import Instance

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio


async def doctor(manifest: Path, cwd: Path) -> DoctorReport:
    backend = DockerBackend(Instance.current())
    try:
        return await run_doctor(manifest, backend, cwd=cwd)
    finally:
        await backend.aclose()


async def test_doctor_passes_the_engine_runtimes_and_images_the_tests_use(
    example_manifest: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    report = await doctor(example_manifest, tmp_path)
    checks = {c.name: c for c in report.checks}
    for name in ("engine", "engine API", "runtime runc", "image offline", "networks", "disk limit", "skills"):
        assert checks[name].status == "ok", checks[name]
    assert "loop-mounted ext4" in checks["disk limit"].detail
    assert docker_client.version()["Version"] in checks["engine"].detail
    assert report.verdict in {"ready", "degraded"}, report.summary


async def test_a_missing_image_fails_and_says_whether_and_how_it_can_be_built(
    write_manifest: ManifestFactory, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    context = tmp_path / "img"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM bottle-mcp/no-such-base:never\nUSER 1000\n")
    m = write_manifest(
        f"""
        [bottles.pulled]
        image = "bottle-mcp/no-such-image:never"
        [bottles.built]
        image = "bottle-mcp/no-such-build:never"
        build = {{ context = "{context}" }}
        [agents.worker]
        bottle = "pulled"
        command = ["true"]
        """
    )
    report = await doctor(m, tmp_path)
    checks = {c.name: c for c in report.checks}
    assert checks["image pulled"].status == "fail"
    assert checks["image pulled"].fix and "docker pull bottle-mcp/no-such-image:never" in checks["image pulled"].fix
    assert checks["image built"].status == "fail"
    assert "bottle-mcp/no-such-base:never" in checks["image built"].detail
    assert report.verdict == "broken"


def test_doctor_command_exits_non_zero_when_the_server_could_not_work(
    write_manifest: ManifestFactory, docker_client: docker.DockerClient, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(
        "[bottles.x]\nimage = 'bottle-mcp/no-such-image:never'\n[agents.a]\nbottle = 'x'\ncommand = ['true']\n"
    )
    assert main(["doctor", "--manifest", str(m)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] image x" in out
    assert "verdict: BROKEN" in out
