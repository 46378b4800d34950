"""A person approves launches: `bottle-mcp serve` over stdio, the SDK client's elicitation callback,
the real engine, both protocol eras."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.context import ClientRequestContext
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult, ErrorData, TextContent

from tests.conftest import ManifestFactory

pytestmark = pytest.mark.anyio

SECRET = "approval-secret-value"


class Person:
    """Answers the server's question the way the test says, and keeps what it was shown."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"action": "accept", "content": {"approve": True}}
        self.questions: list[str] = []
        self.while_deciding: list[Path] = []  # manifests to edit before answering

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        self.questions.append(params.message)
        for path in self.while_deciding:
            await anyio.Path(path).write_text((await anyio.Path(path).read_text()).replace("pypi.org", "other.org"))
        self.while_deciding = []
        return ElicitResult(**self.answer)


@pytest.fixture
def manifest(write_manifest: ManifestFactory, worker_image: str) -> Path:
    return write_manifest(
        f"""
        [host]
        approve = "elevated"
        keep_for = "0"

        [bottles.offline]
        image = "{worker_image}"

        [bottles.online]
        image = "{worker_image}"
        network = "egress"
        egress = {{ allow = ["pypi.org"] }}

        [agents.worker]
        bottle = "offline"
        command = ["true"]

        [agents.fetcher]
        bottle = "online"
        command = ["true"]
        credentials = ["APPROVAL_TOKEN"]
        """
    )


def _params(manifest: Path, cwd: Path, *extra: str) -> StdioServerParameters:
    env = {k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ}
    env["APPROVAL_TOKEN"] = SECRET
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "bottle_mcp",
            "serve",
            "--manifest",
            str(manifest),
            "--approvals-log",
            str(cwd / "approvals.jsonl"),
            *extra,
        ],
        env=env,
        cwd=str(cwd),
    )


def _text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def _launch(client: Client, agent: str) -> CallToolResult:
    plan = await client.call_tool("prepare_bottle", {"agent": agent})
    assert not plan.is_error and isinstance(plan.structured_content, dict), _text(plan)
    return await client.call_tool("launch_bottle", {"plan_id": plan.structured_content["plan_id"]})


async def _mine(client: Client) -> set[str]:
    listed = (await client.call_tool("list_active", {})).structured_content
    assert isinstance(listed, dict)
    return {b["bottle_id"] for b in listed["bottles"] if b["owner"] == "this-server"}


def _events(cwd: Path) -> list[str]:
    log = cwd / "approvals.jsonl"
    assert SECRET not in log.read_text()
    return [json.loads(line)["event"] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_person_approves_declines_cancels_and_an_edit_voids_the_approval(
    mode: str, manifest: Path, tmp_path: Path
) -> None:
    person = Person()
    with anyio.fail_after(90):
        async with Client(_params(manifest, tmp_path), mode=mode, elicitation_callback=person) as client:
            # The offline default launches without a question.
            launched = await _launch(client, "worker")
            assert not launched.is_error, _text(launched)
            assert person.questions == []
            assert len(await _mine(client)) == 1

            for action in ("decline", "cancel"):
                person.answer = {"action": action}
                refused = await _launch(client, "fetcher")
                assert refused.is_error and "Nothing was launched" in _text(refused)
            assert len(await _mine(client)) == 1

            person.answer = {"action": "accept", "content": {"approve": True}}
            person.while_deciding = [manifest]
            stale = await _launch(client, "fetcher")
            assert stale.is_error and "prepare_bottle again" in _text(stale)
            assert len(await _mine(client)) == 1

            approved = await _launch(client, "fetcher")
            assert not approved.is_error, _text(approved)
            assert isinstance(approved.structured_content, dict)
            bottle_id = approved.structured_content["bottle_id"]
            ran = await client.call_tool("exec", {"bottle_id": bottle_id, "command": 'printf %s "$APPROVAL_TOKEN"'})
            # The bottle holds a stand-in of the same length, never the value itself.
            assert isinstance(ran.structured_content, dict)
            stand_in = ran.structured_content["stdout"]
            assert len(stand_in) == len(SECRET) and stand_in != SECRET and "redacted" not in stand_in
            assert len(await _mine(client)) == 2

    assert len(person.questions) == 4
    assert "other.org" in person.questions[-1] and "APPROVAL_TOKEN (stand-in in the bottle)" in person.questions[-1]
    assert all(SECRET not in q for q in person.questions)
    assert _events(tmp_path) == ["declined", "cancelled", "approved", "launch-failed", "approved", "launched"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_without_elicitation_launches_offline_bottles_only(
    mode: str, manifest: Path, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with Client(_params(manifest, tmp_path), mode=mode) as client:
            launched = await _launch(client, "worker")
            assert not launched.is_error, _text(launched)
            refused = await _launch(client, "fetcher")
            assert refused.is_error
            assert "cannot ask its user" in _text(refused) and "--approve" in _text(refused)
            assert len(await _mine(client)) == 1
    assert _events(tmp_path) == ["no-client-support"]


async def test_the_command_line_policy_wins_over_the_manifest(manifest: Path, tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with Client(_params(manifest, tmp_path, "--approve", "never"), mode="legacy") as client:
            launched = await _launch(client, "fetcher")
            assert not launched.is_error, _text(launched)
    assert not (tmp_path / "approvals.jsonl").exists()
