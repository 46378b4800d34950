"""init: a starter manifest that validates, carries the models' descriptions, and is never overwritten by accident."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bottle_mcp.backends.fake import FakeBackend
from bottle_mcp.cli import main
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import BottleDef, HostSettings, Resources, load_manifest, parse_manifest
from bottle_mcp.service import BottleService, ServiceConfig
from bottle_mcp.starter import registration, starter_text

from ..conftest import ManifestFactory


def test_the_starter_manifest_validates_and_describes_its_keys(tmp_path: Path) -> None:
    text = starter_text()
    lm = parse_manifest(text.encode(), tmp_path / "bottle-mcp.toml")
    assert set(lm.manifest.agents) == {"worker"}
    lines = text.splitlines()
    for model, key in ((HostSettings, "output_cap"), (BottleDef, "runtime"), (Resources, "memory")):
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[i - 1] == f"# {model.model_fields[key].description}"
    assert "# What the server may touch on the host." in lines


@pytest.mark.anyio
async def test_the_starter_manifest_gives_a_plan_for_its_agent(tmp_path: Path) -> None:
    path = tmp_path / "bottle-mcp.toml"
    path.write_text(starter_text())
    service = BottleService(ServiceConfig(manifest_path=path, cwd=tmp_path), FakeBackend(Instance.current()))
    plan = await service.prepare("worker")
    assert plan.user == "1000:1000"
    assert plan.network.mode == "none"


def test_init_writes_once_and_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conf" / "bottle-mcp.toml"
    assert main(["init", str(path)]) == 0
    out = capsys.readouterr().out
    assert "claude mcp add" in out and str(path) in out
    path.write_text(path.read_text() + "# my edit\n")
    assert main(["init", str(path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert path.read_text().endswith("# my edit\n")
    assert main(["init", str(path), "--force"]) == 0
    assert not path.read_text().endswith("# my edit\n")


def test_init_print_only_writes_nothing_and_prints_json_registrations(
    minimal_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = minimal_manifest.read_text()
    assert main(["init", str(minimal_manifest), "--print-only", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["written"] is False
    assert minimal_manifest.read_text() == before
    server = data["mcp_json"]["mcpServers"]["bottle-mcp"]
    assert server["type"] == "stdio"
    assert server["args"][-3:] == ["serve", "--manifest", str(minimal_manifest)][-3:]
    assert data["claude_code"][:3] == ["claude", "mcp", "add"]
    assert "--" in data["claude_code"]
    assert "type" not in data["claude_desktop"]["mcpServers"]["bottle-mcp"]


def test_registration_passes_credentials_by_name_only(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "value-that-must-not-appear")
    m = write_manifest(
        """
        [bottles.offline]
        image = "bottle-mcp/worker:latest"
        [agents.worker]
        bottle = "offline"
        command = ["true"]
        credentials = ["API_TOKEN"]
        """
    )
    reg = registration(m, load_manifest(m).manifest)
    assert reg["mcp_json"]["mcpServers"]["bottle-mcp"]["env"] == {"API_TOKEN": "${API_TOKEN}"}
    assert "API_TOKEN=$API_TOKEN" in reg["claude_code"]
    assert "value-that-must-not-appear" not in json.dumps(reg)
