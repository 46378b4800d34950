"""The command line against the real engine: plan, ls, cleanup, schema, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import ManifestFactory


def _cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bottle_mcp", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_plan_prints_the_preflight_as_json(example_manifest: Path) -> None:
    out = _cli("plan", "worker", "--manifest", str(example_manifest))
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["agent"] == "worker"
    assert plan["capabilities_dropped"] == ["ALL"]
    assert plan["image_present"] is True


def test_plan_for_an_unknown_agent_names_the_known_ones(example_manifest: Path) -> None:
    out = _cli("plan", "nobody", "--manifest", str(example_manifest))
    assert out.returncode == 2
    assert "no agent named 'nobody'" in out.stderr
    assert "known agents: worker" in out.stderr


def test_invalid_manifest_is_reported_with_toml_path(write_manifest: ManifestFactory) -> None:
    bad = write_manifest(
        """
        [bottles.b]
        image = "x"
        runtime = "kata"
        [agents.a]
        bottle = "b"
        command = ["true"]
        skills = ["ok", "../escape"]
        """
    )
    out = _cli("plan", "a", "--manifest", str(bad))
    assert out.returncode == 2
    assert "bottles.b.runtime" in out.stderr
    assert "agents.a.skills[1]" in out.stderr
    assert str(bad) in out.stderr


def test_ls_and_cleanup_dry_run_print_json(example_manifest: Path) -> None:
    ls = _cli("ls", "--json")
    assert ls.returncode == 0, ls.stderr
    assert isinstance(json.loads(ls.stdout), list)
    dry = _cli("cleanup", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True


def test_unknown_backend_is_a_clear_error() -> None:
    out = _cli("ls", env={"BOTTLE_MCP_BACKEND": "kubernetes"})
    assert out.returncode == 2
    assert "unknown backend 'kubernetes'" in out.stderr
    assert "docker" in out.stderr


def test_dead_engine_is_a_clear_error(tmp_path: Path) -> None:
    out = _cli("ls", env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert out.returncode == 2
    assert "unreachable" in out.stderr
    assert "DOCKER_HOST" in out.stderr
