"""The MCP Inspector CLI, a client nobody here wrote, lists, lints and calls the tools over stdio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import Clients, server_argv

TOOLS = {"prepare_bottle", "launch_bottle", "exec", "cp_in", "stop_bottle", "list_active", "cleanup", "doctor"}
EXIT_TOOL_ERROR = 5


def inspector(clients: Clients, manifest: Path, cwd: Path, *args: str, backend: str = "fake") -> tuple[int, Any, str]:
    """Run `mcp-inspector --cli` against `bottle-mcp serve`; return exit code, parsed stdout, stderr."""
    env_args = ["-e", f"BOTTLE_MCP_BACKEND={backend}"]
    done = clients.run(
        "inspector",
        ["--cli", "--format", "json", *env_args, *args, "--cwd", str(cwd), "--", *server_argv(manifest)],
        cwd=cwd,
    )
    out = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, out, done.stderr


def structured(out: dict[str, Any]) -> dict[str, Any]:
    result = out["result"]
    assert not result.get("isError"), result
    data: dict[str, Any] = result["structuredContent"]
    return data


def test_inspector_lists_every_tool_and_its_strict_schema_lint_is_clean(
    clients: Clients, minimal_manifest: Path, tmp_path: Path
) -> None:
    code, out, err = inspector(clients, minimal_manifest, tmp_path, "--method", "tools/list", "--strict")
    assert code == 0, f"inspector exited {code}: {err[-2000:]}"
    tools = {t["name"]: t for t in out["result"]["tools"]}
    assert set(tools) >= TOOLS
    for name, tool in tools.items():
        assert tool["inputSchema"]["type"] == "object", name
        assert "outputSchema" in tool, f"{name} has no output schema"
        assert len(tool["description"]) > 80, f"{name}'s description is too thin for a supervising model"


def test_inspector_calls_prepare_bottle_and_gets_a_structured_plan(
    clients: Clients, minimal_manifest: Path, tmp_path: Path
) -> None:
    code, out, err = inspector(
        clients,
        minimal_manifest,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "prepare_bottle",
        "--tool-args-json",
        '{"agent": "worker"}',
    )
    assert code == 0, err[-2000:]
    plan = structured(out)
    assert plan["agent"] == "worker"
    assert plan["plan_id"].startswith("p-")
    assert plan["capabilities_dropped"] == ["ALL"]


def test_inspector_sees_a_refusal_as_a_tool_error_that_says_what_to_do(
    clients: Clients, minimal_manifest: Path, tmp_path: Path
) -> None:
    code, out, _ = inspector(
        clients,
        minimal_manifest,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "stop_bottle",
        "--tool-args-json",
        '{"bottle_id": "b-nothere"}',
    )
    assert code == EXIT_TOOL_ERROR
    text = out["result"]["content"][0]["text"]
    assert "no bottle 'b-nothere'" in text
    assert "list_active" in text


@pytest.mark.docker
def test_inspector_drives_the_real_engine_doctor_and_preflight(
    clients: Clients, example_manifest: Path, tmp_path: Path
) -> None:
    code, out, err = inspector(
        clients, example_manifest, tmp_path, "--method", "tools/call", "--tool-name", "doctor", backend="docker"
    )
    assert code == 0, err[-2000:]
    report = structured(out)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["engine"]["status"] == "ok", checks["engine"]
    assert checks["image offline"]["status"] == "ok", checks["image offline"]
    assert report["verdict"] != "broken", report

    code, out, err = inspector(
        clients,
        example_manifest,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "prepare_bottle",
        "--tool-args-json",
        '{"agent": "worker"}',
        backend="docker",
    )
    assert code == 0, err[-2000:]
    plan = structured(out)
    assert plan["backend"] == "docker"
    assert plan["image_present"] is True
    assert plan["runtime"]["effective"] in {"runc", "runsc"}
