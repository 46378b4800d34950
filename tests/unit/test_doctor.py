"""doctor: one verdict, one entry per check, a fix for everything that is not ok."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.fake import FakeBackend
from bottle_mcp.doctor import DoctorReport, format_report, run_doctor
from bottle_mcp.labels import Instance
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio


def by_name(report: DoctorReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


async def doctor(manifest: Path, cwd: Path, environ: dict[str, str] | None = None) -> DoctorReport:
    return await run_doctor(manifest, FakeBackend(Instance.current()), cwd=cwd, environ=environ or {})


async def test_doctor_is_ready_when_everything_it_needs_is_there(minimal_manifest: Path, tmp_path: Path) -> None:
    report = await doctor(minimal_manifest, tmp_path)
    assert report.verdict == "ready", format_report(report)
    assert report.exit_code == 0
    assert {"manifest", "engine", "leftovers", "host roots", "skills", "credentials"} <= set(by_name(report))
    assert all(c.fix is None for c in report.checks)


async def test_an_invalid_manifest_is_broken_and_skips_what_depends_on_it(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    bad = write_manifest("[bottles.offline]\nimage = 'x'\nnetwork = 'wide-open'\n")
    report = await doctor(bad, tmp_path)
    assert report.verdict == "broken"
    assert report.exit_code == 1
    checks = {c.name: c for c in report.checks}
    assert checks["manifest"].status == "fail"
    assert "bottles.offline.network" in checks["manifest"].detail
    assert checks["manifest"].fix and "bottle-mcp init" in checks["manifest"].fix
    assert checks["skills"].status == "skip"
    assert "manifest" in report.summary


async def test_a_missing_skill_fails_with_its_name_and_where_it_was_looked_for(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    skills = tmp_path / "skills"
    (skills / "present").mkdir(parents=True)
    (skills / "present" / "SKILL.md").write_text("# present\n")
    m = write_manifest(
        f"""
        [host]
        skills_dir = "{skills}"
        [bottles.offline]
        image = "bottle-mcp/worker:latest"
        [agents.worker]
        bottle = "offline"
        command = ["true"]
        skills = ["present", "absent"]
        """
    )
    report = await doctor(m, tmp_path)
    skill = next(c for c in report.checks if c.name == "skills")
    assert skill.status == "fail"
    assert f"skill(s) absent not found in {skills}" in skill.detail
    assert report.verdict == "broken"


async def test_credentials_are_reported_by_name_and_never_by_value(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    m = write_manifest(
        """
        [bottles.offline]
        image = "bottle-mcp/worker:latest"
        [agents.worker]
        bottle = "offline"
        command = ["true"]
        credentials = ["API_TOKEN", "OTHER_TOKEN"]
        """
    )
    secret = "s3cr3t-value-never-shown"
    report = await doctor(m, tmp_path, environ={"API_TOKEN": secret})
    cred = next(c for c in report.checks if c.name == "credentials")
    assert cred.status == "warn"
    assert "OTHER_TOKEN" in cred.detail
    assert cred.fix and "-e OTHER_TOKEN=" in cred.fix
    assert report.verdict == "degraded"
    assert report.exit_code == 0
    assert secret not in report.model_dump_json()


async def test_a_credential_the_proxy_cannot_substitute_fails_with_the_fix(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    m = write_manifest(
        """
        [bottles.net]
        image = "bottle-mcp/worker:latest"
        network = "egress"
        [bottles.net.egress]
        allow = ["pinned.example.com"]
        passthrough = ["pinned.example.com"]
        [bottles.net.egress.credentials]
        API_TOKEN = ["pinned.example.com"]
        [agents.worker]
        bottle = "net"
        command = ["true"]
        credentials = ["API_TOKEN"]
        """
    )
    secret = "s3cr3t-value-never-shown"
    report = await doctor(m, tmp_path, environ={"API_TOKEN": secret})
    cred = next(c for c in report.checks if c.name == "credentials")
    assert cred.status == "fail" and "pinned.example.com" in cred.detail
    assert cred.fix and "real_credentials" in cred.fix
    assert secret not in report.model_dump_json()


async def test_a_host_root_that_does_not_exist_fails(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    m = write_manifest(
        """
        [host]
        roots = ["no-such-folder"]
        [bottles.offline]
        image = "bottle-mcp/worker:latest"
        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )
    report = await doctor(m, tmp_path)
    roots = next(c for c in report.checks if c.name == "host roots")
    assert roots.status == "fail"
    assert "no-such-folder" in roots.detail


async def test_an_unreachable_engine_says_which_address_and_how_to_pass_it_to_the_host(
    minimal_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", where)
    backend = DockerBackend(Instance.current())
    try:
        report = await run_doctor(minimal_manifest, backend, cwd=tmp_path, environ={"DOCKER_HOST": where})
    finally:
        await backend.aclose()
    checks = {c.name: c for c in report.checks}
    assert checks["engine"].status == "fail"
    assert where in checks["engine"].detail and "DOCKER_HOST" in checks["engine"].detail
    assert checks["engine"].fix and "DOCKER_HOST" in checks["engine"].fix
    assert checks["images"].status == "skip"
    assert report.verdict == "broken"
    assert "FAIL" in format_report(report)


async def test_the_doctor_tool_returns_the_same_report_to_a_client(minimal_manifest: Path, tmp_path: Path) -> None:
    service = BottleService(
        ServiceConfig(manifest_path=minimal_manifest, cwd=tmp_path), FakeBackend(Instance.current())
    )
    async with Client(build_server(service)) as client:
        result = await client.call_tool("doctor", {})
    assert not result.is_error
    data = result.structured_content
    assert isinstance(data, dict)
    assert data["verdict"] == "ready"
    assert {c["name"] for c in data["checks"]} >= {"manifest", "host roots"}
