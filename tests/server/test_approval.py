"""A person approves launches through the client's elicitation: in-process server on the fake backend.

Every scenario runs in both protocol eras: the handshake era (a standalone elicitation request
during the call) and 2026-07-28 (an InputRequiredResult the client answers and retries).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult, ErrorData, TextContent

from bottle_mcp.backends.fake import FakeBackend, FakeWorld
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import ApprovePolicy
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig
from tests.conftest import ManifestFactory

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]

MANIFEST = """\
[host]
{host}

[bottles.offline]
image = "bottle-mcp/worker:latest"

[bottles.online]
image = "bottle-mcp/worker:latest"
network = "egress"
egress = {{ allow = ["pypi.org", "*.example.com"] }}

[agents.worker]
bottle = "offline"
command = ["true"]
prompt = "Be brief."

[agents.fetcher]
bottle = "online"
command = ["true"]
prompt = "Fetch."
credentials = ["APPROVAL_TEST_TOKEN"]
"""

SECRET = "s3cret-value-never-shown"


class Person:
    """The elicitation callback: answers like a person would, and remembers what it was shown."""

    def __init__(self, action: str = "accept", content: dict[str, Any] | None = None) -> None:
        self.action = action
        self.content = {"approve": True} if content is None and action == "accept" else content
        self.questions: list[str] = []
        self.before_answer: Callable[[], object] = lambda: None

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        self.questions.append(params.message)
        self.before_answer()
        return ElicitResult(action=self.action, content=self.content)


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVAL_TEST_TOKEN", SECRET)


def manifest(write_manifest: ManifestFactory, approve: ApprovePolicy | None = None) -> Path:
    return write_manifest(MANIFEST.format(host=f'approve = "{approve}"' if approve else ""))


INSTANCE = Instance.current()


@asynccontextmanager
async def serving(
    path: Path,
    tmp_path: Path,
    mode: str,
    person: Person | None,
    override: ApprovePolicy | None = None,
    approvals_log: Path | None = None,
) -> AsyncIterator[tuple[Client, FakeWorld]]:
    world = FakeWorld()
    config = ServiceConfig(
        manifest_path=path,
        cwd=tmp_path,
        approve=override,
        approvals_log=approvals_log or tmp_path / "state" / "approvals.jsonl",
    )
    service = BottleService(config, FakeBackend(INSTANCE, world))
    with anyio.fail_after(20):
        async with Client(build_server(service), mode=mode, elicitation_callback=person) as client:
            yield client, world


async def prepare_and_launch(client: Client, agent: str) -> CallToolResult:
    plan = await client.call_tool("prepare_bottle", {"agent": agent})
    assert not plan.is_error and isinstance(plan.structured_content, dict)
    return await client.call_tool("launch_bottle", {"plan_id": plan.structured_content["plan_id"]})


def text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


def bottles(world: FakeWorld) -> list[str]:
    return [o.id for o in world.objects.values() if o.kind == "container"]


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "approvals.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", MODES)
async def test_approved_elevated_launch_shows_the_plan_and_is_recorded(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    person = Person("accept")
    async with serving(manifest(write_manifest), tmp_path, mode, person) as (client, world):
        result = await prepare_and_launch(client, "fetcher")
        assert not result.is_error, text(result)
        assert isinstance(result.structured_content, dict)
        bottle_id = result.structured_content["bottle_id"]
        assert len(bottles(world)) == 1
    [question] = person.questions
    for shown in (
        "bottle-mcp/worker:latest",
        "pypi.org",
        "*.example.com",
        "APPROVAL_TEST_TOKEN (stand-in in the bottle)",
        "1g memory",
    ):
        assert shown in question
    assert "runtime:" in question and "resources:" in question
    assert SECRET not in question
    approved, launched = records(tmp_path)
    assert (approved["event"], launched["event"]) == ("approved", "launched")
    assert launched["bottle_id"] == bottle_id
    assert approved["plan_digest"] in question and approved["plan_id"] in question
    assert approved["credentials"] == ["APPROVAL_TEST_TOKEN"]
    assert approved["server_instance"] == INSTANCE.id
    assert SECRET not in (tmp_path / "state" / "approvals.jsonl").read_text()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("action", "content", "event", "says"),
    [
        ("decline", None, "declined", "declined"),
        ("cancel", None, "cancelled", "The client cancelled the approval request (no person was asked)"),
        ("accept", {"approve": False}, "declined", "without ticking"),
    ],
)
async def test_a_person_who_does_not_approve_stops_the_launch(
    mode: str,
    action: str,
    content: dict[str, Any] | None,
    event: str,
    says: str,
    write_manifest: ManifestFactory,
    tmp_path: Path,
) -> None:
    person = Person(action, content)
    async with serving(manifest(write_manifest), tmp_path, mode, person) as (client, world):
        result = await prepare_and_launch(client, "fetcher")
        assert result.is_error
        assert says in text(result) and "Nothing was launched." in text(result)
        assert bottles(world) == []
    assert len(person.questions) == 1
    assert [r["event"] for r in records(tmp_path)] == [event]


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_is_refused_with_the_setting_to_change(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    async with serving(manifest(write_manifest), tmp_path, mode, None) as (client, world):
        result = await prepare_and_launch(client, "fetcher")
        assert result.is_error
        message = text(result)
        assert "cannot ask its user" in message and "Nothing was launched" in message
        assert "[host] approve" in message and "--approve" in message
        assert bottles(world) == []
    assert [r["event"] for r in records(tmp_path)] == ["no-client-support"]


@pytest.mark.parametrize("mode", MODES)
async def test_the_offline_default_launches_without_a_question_under_elevated(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    for person in (Person("decline"), None):  # a person who would say no is never asked; no callback works too
        async with serving(manifest(write_manifest, "elevated"), tmp_path, mode, person) as (client, world):
            result = await prepare_and_launch(client, "worker")
            assert not result.is_error, text(result)
            assert len(bottles(world)) == 1
        assert person is None or person.questions == []
    assert records(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_manifest_changed_while_the_person_decides_launches_nothing(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    path = manifest(write_manifest)
    person = Person("accept")
    person.before_answer = lambda: path.write_text(path.read_text().replace('"pypi.org"', '"evil.example.org"'))
    async with serving(path, tmp_path, mode, person) as (client, world):
        result = await prepare_and_launch(client, "fetcher")
        assert result.is_error and "prepare_bottle again" in text(result)
        assert bottles(world) == []
        # A new plan from the edited manifest is a new question, showing the new host.
        person.before_answer = lambda: None
        result = await prepare_and_launch(client, "fetcher")
        assert not result.is_error, text(result)
    assert len(person.questions) == 2 and "evil.example.org" in person.questions[1]
    assert [r["event"] for r in records(tmp_path)] == ["approved", "launch-failed", "approved", "launched"]
    assert records(tmp_path)[1]["error"] == "StalePlanError"


@pytest.mark.parametrize("mode", MODES)
async def test_always_asks_even_for_the_offline_default(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    person = Person("decline")
    async with serving(manifest(write_manifest, "always"), tmp_path, mode, person) as (client, world):
        result = await prepare_and_launch(client, "worker")
        assert result.is_error and bottles(world) == []
    assert "asked because approve = 'always'" in person.questions[0]


async def test_never_launches_elevated_bottles_without_asking(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    person = Person("decline")
    async with serving(manifest(write_manifest, "never"), tmp_path, "legacy", person) as (client, world):
        result = await prepare_and_launch(client, "fetcher")
        assert not result.is_error, text(result)
        assert len(bottles(world)) == 1
    assert person.questions == []


async def test_the_command_line_wins_over_the_manifest(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    person = Person("decline")
    path = manifest(write_manifest, "never")
    async with serving(path, tmp_path, "legacy", person, override="always") as (client, world):
        result = await prepare_and_launch(client, "worker")
        assert result.is_error and bottles(world) == []
    assert records(tmp_path)[0]["policy_source"] == "the server's command line (--approve)"


async def test_the_policy_is_not_a_tool_argument(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    async with serving(manifest(write_manifest, "always"), tmp_path, "legacy", None) as (client, world):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools["launch_bottle"].input_schema["properties"]) == {"plan_id"}
        plan = await client.call_tool("prepare_bottle", {"agent": "worker"})
        assert isinstance(plan.structured_content, dict)
        result = await client.call_tool(
            "launch_bottle", {"plan_id": plan.structured_content["plan_id"], "answer": {"approve": True}}
        )
        assert result.is_error and bottles(world) == []


async def test_an_approval_that_cannot_be_recorded_launches_nothing(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    unwritable = tmp_path / "not-a-folder" / "approvals.jsonl"
    person = Person("accept")
    async with serving(manifest(write_manifest), tmp_path, "legacy", person, approvals_log=unwritable) as (
        client,
        world,
    ):
        result = await prepare_and_launch(client, "fetcher")
        assert result.is_error and "could not be recorded" in text(result) and "--approvals-log" in text(result)
        assert bottles(world) == []
        # Launches that need no approval do not depend on the record.
        assert not (await prepare_and_launch(client, "worker")).is_error


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancel_that_took_a_person_time_is_reported_as_dismissed(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    person = Person("cancel")
    person.before_answer = lambda: time.sleep(1.2)
    async with serving(manifest(write_manifest), tmp_path, mode, person) as (client, _world):
        result = await prepare_and_launch(client, "fetcher")
        assert result.is_error
        assert "was dismissed without an answer. Nothing was launched." in text(result)
        assert "no person was asked" not in text(result)
    assert [r["event"] for r in records(tmp_path)] == ["cancelled"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_headless_client_is_told_how_to_approve_ahead_and_a_digest_approved_ahead_launches_once(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOTTLE_MCP_PREAPPROVALS", str(tmp_path / "state" / "preapproved.jsonl"))
    headless = Person("cancel")  # what Claude Code does in -p mode: cancel at once, nobody asked
    async with serving(manifest(write_manifest), tmp_path, mode, headless) as (client, world):
        plan = await client.call_tool("prepare_bottle", {"agent": "fetcher"})
        assert isinstance(plan.structured_content, dict)
        digest = plan.structured_content["digest"]
        note = plan.structured_content["approval"]
        assert "needs a person's approval" in note and f"bottle-mcp approve {digest}" in note
        plan_id = plan.structured_content["plan_id"]
        refused = await client.call_tool("launch_bottle", {"plan_id": plan_id})
        assert refused.is_error and f"`bottle-mcp approve {digest}`" in text(refused)

        done = subprocess.run(  # noqa: ASYNC221 - the person's command, run while the server waits
            [sys.executable, "-m", "bottle_mcp", "approve", digest, "--valid-for", "10m"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Approved one launch" in done.stdout and done.stderr == ""
        again = await client.call_tool("prepare_bottle", {"agent": "fetcher"})
        assert isinstance(again.structured_content, dict)
        assert again.structured_content["approval"].startswith("Approved ahead: plan digest")
        launched = await client.call_tool("launch_bottle", {"plan_id": plan_id})
        assert not launched.is_error, text(launched)
        assert len(bottles(world)) == 1
        # Used up: the next launch of the same plan is refused again.
        second = await client.call_tool("launch_bottle", {"plan_id": plan_id})
        assert second.is_error and "no person was asked" in text(second)
    assert len(headless.questions) == 2
    assert [r["event"] for r in records(tmp_path)] == ["cancelled", "approved-ahead", "launched", "cancelled"]


@pytest.mark.parametrize("mode", MODES)
async def test_agents_approved_ahead_in_the_manifest_launch_without_a_question_and_are_recorded(
    mode: str, write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    path = write_manifest(MANIFEST.format(host='approved_agents = ["fetcher"]'))
    person = Person("decline")
    async with serving(path, tmp_path, mode, person) as (client, world):
        result = await prepare_and_launch(client, "fetcher")
        assert not result.is_error, text(result)
        assert len(bottles(world)) == 1
    assert person.questions == []
    approved, launched = records(tmp_path)
    assert (approved["event"], launched["event"]) == ("approved-ahead", "launched")
    assert "approved_agents" in approved["how"]


async def test_bad_digests_and_durations_are_refused_in_sentences(tmp_path: Path) -> None:
    env = {**os.environ, "BOTTLE_MCP_PREAPPROVALS": str(tmp_path / "pre.jsonl")}
    for args, says in ((["nothex"], "is not a plan digest"), (["0123456789abcdef", "--valid-for", "soon"], "30m")):
        done = subprocess.run(  # noqa: ASYNC221 - a short command line call
            [sys.executable, "-m", "bottle_mcp", "approve", *args], capture_output=True, text=True, env=env, check=False
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr
