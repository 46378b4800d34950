"""A supervisor delegates work over stdio: agent runs with progress, a cancel, files and commits back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from bottle_mcp import labels as L

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

SECRET = "sk-standin-secret-9f8e7d6c5b4a"


def git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.name=Host", "-c", "user.email=host@example.invalid", "-c", "init.defaultBranch=main"]
    return subprocess.run(["git", "-C", str(repo), *ident, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("# project\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "start")
    return repo


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert isinstance(result.structured_content, dict)
    return result.structured_content


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_supervisor_delegates_a_task_and_brings_the_work_back(
    mode: str, write_manifest: ManifestFactory, standin_image: str, host_repo: Path, docker_client: docker.DockerClient
) -> None:
    manifest = write_manifest(
        f"""
        [bottles.standin]
        image = "{standin_image}"
        # The real value in the bottle (not a stand-in), so that redaction of what the agent prints is tested.
        real_credentials = ["BOTTLE_TEST_TOKEN"]

        [agents.standin]
        bottle = "standin"
        command = ["standin-agent", "-p", "--output-format", "stream-json", "--verbose",
                   "--append-system-prompt-file", "{{system_prompt_file}}"]
        prompt = "You are a stand-in."
        credentials = ["BOTTLE_TEST_TOKEN"]
        """
    )
    env = {k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ}
    env["BOTTLE_TEST_TOKEN"] = SECRET
    params = StdioServerParameters(
        command=sys.executable,
        # The human running this server chose not to be asked (approval has its own tests).
        args=["-m", "bottle_mcp", "serve", "--manifest", str(manifest), "--approve", "never", "--on-exit", "remove"],
        env=env,
        cwd=str(host_repo),
    )
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    with anyio.fail_after(120):
        async with Client(params, mode=mode) as client:
            plan = _ok(await client.call_tool("prepare_bottle", {"agent": "standin", "copy_cwd": True}))
            bid = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]
            [cred] = plan["credentials"]
            assert (cred["name"], cred["present"], cred["in_bottle"]) == ("BOTTLE_TEST_TOKEN", True, "real value")
            assert SECRET not in json.dumps(plan)
            bottle_only = {"label": [f"{L.BOTTLE}={bid}", f"{L.ROLE}=bottle"]}  # not its reaper (keep.py)
            (container,) = docker_client.api.containers(filters=bottle_only)
            assert SECRET not in json.dumps(container["Labels"])

            task = (
                "write notes.txt: hello from the bottle\ncommit: add notes\n"
                "progress-until /tmp/go\nenv BOTTLE_TEST_TOKEN"
            )
            run = _ok(await client.call_tool("run_agent", {"bottle_id": bid, "prompt": task}))
            assert run["status"] == "running" and run["kind"] == "agent"
            hang = _ok(await client.call_tool("run_agent", {"bottle_id": bid, "prompt": "hang"}))

            # Poll the first run incrementally, as a supervisor that keeps talking to its user would;
            # the agent reports progress until the test lets it finish.
            cursor, stdout, result = None, "", None
            while True:
                result = _ok(
                    await client.call_tool(
                        "wait_job",
                        {"job_id": run["job_id"], "timeout_s": 2, "cursor": cursor},
                        progress_callback=on_progress,
                    )
                )
                assert result["cursor"] == (cursor or "0:0")
                stdout += result["stdout"]["text"]
                cursor = result["next_cursor"]
                if result["done"]:
                    break
                if any("step" in m for m in messages):
                    _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "touch /tmp/go"}))
            assert result is not None and result["done"]
            assert result["job"]["status"] == "exited" and result["job"]["exit_code"] == 0
            assert any("step" in m for m in messages), messages
            assert all(SECRET not in m for m in messages)
            agent = result["agent_result"]
            assert agent["cost_usd"] == 0.0123 and agent["num_turns"] == 5 and agent["is_error"] is False
            assert "step 1" in stdout
            assert "committed 'add notes'" in agent["final_answer"]
            assert "BOTTLE_TEST_TOKEN=[redacted BOTTLE_TEST_TOKEN]" in agent["final_answer"]
            assert SECRET not in stdout and stdout.count('"type": "result"') == 1

            # Cancel the other run mid-flight: nothing of it may survive in the bottle.
            still = _ok(await client.call_tool("wait_job", {"job_id": hang["job_id"], "timeout_s": 0.5}))
            assert not still["done"]
            cancelled = _ok(await client.call_tool("cancel_job", {"job_id": hang["job_id"]}))
            assert cancelled["job"]["status"] == "cancelled" and cancelled["processes_left"] == 0
            ps = _ok(await client.call_tool("exec", {"bottle_id": bid, "command": "ps -eo args"}))["stdout"]
            assert "standin-agent" not in ps and "sleep 86400" not in ps

            copied = _ok(
                await client.call_tool(
                    "cp_out", {"bottle_id": bid, "bottle_path": "/workspace/notes.txt", "host_path": "notes-copy.txt"}
                )
            )
            assert copied["files"] == 1
            assert (host_repo / "notes-copy.txt").read_text() == "hello from the bottle\n"

            edit = "echo wip >> README.md && echo new > scratch.txt"
            _ok(await client.call_tool("exec", {"bottle_id": bid, "command": edit}))
            diff = _ok(await client.call_tool("diff", {"bottle_id": bid}))
            assert "+hello from the bottle" in diff["diff"] and "+wip" in diff["diff"]
            assert diff["untracked"] == ["scratch.txt"] and "README.md" in diff["stat"]
            branch = _ok(await client.call_tool("fetch_branch", {"bottle_id": bid, "branch": "agent/notes"}))
            assert [c["subject"] for c in branch["commits"]] == ["add notes"]
            assert git(host_repo, "show", "agent/notes:notes.txt") == "hello from the bottle\n"
            assert git(host_repo, "rev-parse", "agent/notes^").strip() == branch["start"]
            assert git(host_repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"

            background = _ok(
                await client.call_tool("exec", {"bottle_id": bid, "command": "echo built; exit 4", "background": True})
            )
            job = background["job"]
            done = _ok(await client.call_tool("wait_job", {"job_id": job["job_id"], "timeout_s": 20}))
            assert (done["job"]["exit_code"], done["stdout"]["text"]) == (4, "built\n")
            listed = _ok(await client.call_tool("list_jobs", {"bottle_id": bid}))["jobs"]
            assert {j["job_id"]: j["status"] for j in listed} == {
                run["job_id"]: "exited",
                hang["job_id"]: "cancelled",
                job["job_id"]: "exited",
            }

    flt = {"label": [f"{L.BOTTLE}={bid}"]}
    assert docker_client.api.containers(all=True, filters=flt) == []
