"""Claude Code, a real MCP host, drives bottle-mcp on the real engine; a scripted stand-in plays the model.

The stand-in of the Messages API (model_standin.py) answers each turn with the next tool call of
SCRIPT, taking ids from the results it was sent, and records every tool result the host passed
to the model. Claude Code (npm, installed by scripts/third-party-clients.sh) runs in `-p` mode
with a throwaway HOME; it and the stand-in run in a network namespace with only loopback, so
nothing leaves the machine (the engine is reached over its unix socket). Asserted: what the
model was sent at each step, that the host's MCP log has no error line, that the server wrote
nothing to stderr, and that nothing of the server is left on the engine after the host exits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.shaping import RESULT_CHAR_LIMIT

from ..conftest import IN_CI, REPO, ManifestFactory
from .conftest import Clients

pytestmark = pytest.mark.docker

SCRIPT: list[dict[str, Any]] = [
    # In -p mode the host starts the first turn before its MCP servers are connected, so a model
    # first waits for them with the host's own tool.
    {"tool": "WaitForMcpServers", "builtin": True, "args": {}},
    {"tool": "prepare_bottle", "args": {"agent": "worker"}},
    {"tool": "launch_bottle", "args": {"plan_id": "$plan_id"}},
    {"tool": "list_active", "args": {}},
    {"tool": "exec", "args": {"bottle_id": "$bottle_id", "command": "echo hello from the bottle"}},
    {"tool": "exec", "args": {"bottle_id": "$bottle_id", "command": "seq 1 3000000; echo THE-END"}},
    {"tool": "exec", "args": {"bottle_id": "$bottle_id", "command": "true", "timeout_s": 0}},
    {"tool": "exec", "args": {"bottle_id": "$bottle_id", "command": "sleep 1; echo bg-done", "background": True}},
    {"tool": "wait_job", "args": {"job_id": "$job.job_id", "timeout_s": 20}},
    {"tool": "stop_bottle", "args": {"bottle_id": "$bottle_id"}},
]
HOST_LIMIT = 50_000  # above this Claude Code shows the model only a preview


def _netns_prefix() -> list[str]:
    """Run inside a network namespace with only loopback up, when this machine allows it."""
    if shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "netns"]
    if IN_CI:
        pytest.fail("unshare -n is not available: the host test must not reach any network")
    pytest.skip("unshare -n is not available here")


def _leftovers(client: docker.DockerClient, instance: str) -> list[str]:
    flt: dict[str, Any] = {"label": f"{L.INSTANCE}={instance}"}
    return (
        [str(c.name) for c in client.containers.list(all=True, filters=flt)]
        + [str(v.name) for v in client.volumes.list(filters=flt)]
        + [str(n.name) for n in client.networks.list(filters=flt)]
    )


def test_claude_code_drives_a_bottle_end_to_end_and_leaves_nothing(
    clients: Clients, write_manifest: ManifestFactory, worker_image: str, tmp_path: Path
) -> None:
    manifest = write_manifest(
        f"""
        [host]
        keep_for = "0"  # removed when the server goes, not kept
        approve = "never"

        [bottles.offline]
        image = "{worker_image}"
        warm_pool = 0

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )
    home = tmp_path / "home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    server_env = {
        "BOTTLE_MCP_APPROVALS_LOG": str(tmp_path / "approvals.jsonl"),
        **{k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ},
    }
    config = {
        "mcpServers": {
            "bottles": {
                "type": "stdio",
                "command": sys.executable,
                "args": ["-m", "bottle_mcp", "serve", "--manifest", str(manifest)],
                "env": server_env,
            }
        }
    }
    (tmp_path / "mcp.json").write_text(json.dumps(config))
    (tmp_path / "script.json").write_text(json.dumps(SCRIPT))
    record_path = tmp_path / "record.json"
    claude = [
        str(clients.script),
        "claude",
        "-p",
        "Use the bottles tools as the script says.",
        "--mcp-config",
        str(tmp_path / "mcp.json"),
        "--strict-mcp-config",
        "--allowedTools",
        "mcp__bottles",
        "--output-format",
        "json",
    ]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_API_KEY": "stand-in-key",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "PYTHONPATH": str(REPO),
        **{k: os.environ[k] for k in ("DOCKER_HOST", "LANG") if k in os.environ},
    }
    driver = [
        sys.executable,
        "-m",
        "tests.clients.model_standin",
        str(tmp_path / "script.json"),
        str(record_path),
        "--",
    ]
    done = subprocess.run(
        [*_netns_prefix(), *driver, *claude],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(record_path.read_text())
    assert record["exit_code"] == 0, record["stderr"][-3000:] + record["stdout"][-3000:]
    turns = {t["step"]: t for t in record["turns"]}
    assert set(turns) >= set(range(len(SCRIPT) + 1)), sorted(turns)

    def sent(step: int) -> tuple[bool, str]:
        """What the model was sent after the tool call of `step`."""
        s = turns[step + 1]["sent"]
        assert s is not None, f"no tool result after step {step}"
        assert len(s["text"]) < HOST_LIMIT, f"step {step}: {len(s['text'])} characters reached the model"
        return s["is_error"], s["text"]

    def data(step: int) -> dict[str, Any]:
        is_error, text = sent(step)
        assert not is_error, f"step {step} ({SCRIPT[step]['tool']}) failed: {text[:500]}"
        parsed: dict[str, Any] = json.loads(text)
        return parsed

    plan = data(1)
    assert plan["agent"] == "worker" and plan["approval"].startswith("No approval is needed")
    launched = data(2)
    assert launched["status"] == "running"
    instance = data(3)["this_server"]
    hello = data(4)
    assert (hello["exit_code"], hello["stdout"]) == (0, "hello from the bottle\n")
    big = data(5)
    assert big["exit_code"] == 0 and big["truncated"] is True and big["stdout_bytes"] > 20_000_000
    text = sent(5)[1]
    assert len(text) < RESULT_CHAR_LIMIT and text.index('"exit_code"') < 100  # the facts come first
    assert big["stdout"].startswith("1\n2\n3\n") and big["stdout"].endswith("3000000\nTHE-END\n")
    assert big["stdout_path"] in big["stdout"]
    is_error, message = sent(6)
    assert is_error and "Argument 'timeout_s' is 0, out of range; allowed: a number above 0" in message
    assert "pydantic" not in message
    job = data(7)["job"]
    waited = data(8)
    assert waited["done"] is True and waited["job"]["job_id"] == job["job_id"]
    assert waited["stdout"]["text"] == "bg-done\n"
    stopped = data(9)
    assert stopped["bottle_id"] == launched["bottle_id"]
    assert record["other_requests"] == []

    # The host's MCP log of this server: no error line but the tool error the script asked for (the
    # host logs a tool's isError result there too). Anything the server wrote on stderr would be one.
    tool_errors = [t["sent"]["text"] for t in record["turns"] if t["sent"] and t["sent"]["is_error"]]
    logs = list(home.glob(".cache/claude-cli-nodejs/*/mcp-logs-bottles/*.jsonl"))
    assert logs, f"no MCP log under {home}/.cache/claude-cli-nodejs"
    errors = [json.loads(line) for log in logs for line in log.read_text().splitlines() if '"error"' in line]
    unexpected = [e for e in errors if not any(str(e.get("error")) in sent for sent in tool_errors)]
    assert unexpected == [], unexpected
    assert len(errors) == 1, errors

    # After the host's shutdown, nothing of this server is left on the engine.
    client = docker.from_env()
    try:
        deadline = time.monotonic() + 10
        while _leftovers(client, instance) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _leftovers(client, instance) == []
    finally:
        client.close()
