"""The MCP tools through an in-process SDK client, in both protocol eras, on the fake backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from bottle_mcp import labels as L
from bottle_mcp.backends.base import Bottle, Progress, _no_progress
from bottle_mcp.backends.fake import FakeBackend, FakeWorld
from bottle_mcp.errors import LimitError
from bottle_mcp.labels import Instance
from bottle_mcp.models import BottlePlan, BottleSpec
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

OUTPUT_CAP = 1024

MANIFEST = f"""\
[host]
approve = "never"
output_cap = {OUTPUT_CAP}
max_bottles = 3
skills_dir = "skills"

[bottles.offline]
image = "bottle-mcp/worker:latest"

[agents.worker]
bottle = "offline"
command = ["true"]
prompt = "Be brief."
skills = ["review"]
credentials = ["BOTTLE_MCP_TEST_TOKEN"]
"""

TOOLS = {"prepare_bottle", "launch_bottle", "exec", "cp_in", "stop_bottle", "list_active", "cleanup"}


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


@pytest.fixture
def manifest_path(write_manifest: ManifestFactory, tmp_path: Path) -> Path:
    (tmp_path / "skills" / "review").mkdir(parents=True)
    (tmp_path / "skills" / "review" / "SKILL.md").write_text("# Review\n")
    return write_manifest(MANIFEST)


def make_service(manifest_path: Path, world: FakeWorld, instance: Instance | None = None) -> BottleService:
    cwd = manifest_path.parent
    return BottleService(
        ServiceConfig(manifest_path=manifest_path, cwd=cwd, host_roots=[cwd], approvals_log=cwd / "approvals.jsonl"),
        FakeBackend(instance or Instance.current(), world),
    )


@pytest.fixture
def service(manifest_path: Path, world: FakeWorld) -> BottleService:
    return make_service(manifest_path, world)


@asynccontextmanager
async def serve(service: BottleService, mode: str) -> AsyncIterator[Client]:
    with anyio.fail_after(20):
        async with Client(build_server(service), mode=mode) as client:
            yield client


@pytest.fixture
async def client(service: BottleService, mode: str) -> AsyncIterator[Client]:
    async with serve(service, mode) as c:
        yield c


async def call(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    with anyio.fail_after(10):
        return await client.call_tool(tool, arguments)


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await call(client, tool, **arguments)
    assert not result.is_error, text_of(result)
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def fails(client: Client, tool: str, **arguments: Any) -> str:
    result = await call(client, tool, **arguments)
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return text_of(result)


async def launch(client: Client, agent: str = "worker") -> str:
    plan = await ok(client, "prepare_bottle", agent=agent)
    return str((await ok(client, "launch_bottle", plan_id=plan["plan_id"]))["bottle_id"])


def objects_of(world: FakeWorld, instance: Instance) -> list[str]:
    return sorted(o.id for o in world.objects.values() if o.labels.get(L.INSTANCE) == instance.id)


# -- the tool list ---------------------------------------------------------------------------------


async def test_every_tool_is_listed_with_a_title_and_a_description(client: Client) -> None:
    tools = (await client.list_tools()).tools
    assert {t.name for t in tools} >= TOOLS
    for tool in tools:
        assert tool.title, tool.name
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.output_schema is not None, tool.name


async def test_annotations_say_honestly_what_each_tool_does(client: Client) -> None:
    annotations = {t.name: t.annotations for t in (await client.list_tools()).tools}
    read_only = {name for name, a in annotations.items() if a is not None and a.read_only_hint}
    assert {"prepare_bottle", "list_active"} <= read_only
    assert not read_only & {"launch_bottle", "exec", "cp_in", "stop_bottle", "cleanup"}
    for name in TOOLS - read_only:
        a = annotations[name]
        assert a is not None and a.read_only_hint is False, name
        assert a.destructive_hint is not None, f"{name} should say whether it is destructive"
        assert a.idempotent_hint is not None, f"{name} should say whether it is idempotent"
    destructive = {name for name, a in annotations.items() if a is not None and a.destructive_hint}
    assert {"stop_bottle", "cleanup", "exec", "cp_in"} <= destructive
    assert "launch_bottle" not in destructive
    idempotent = {name for name, a in annotations.items() if a is not None and a.idempotent_hint}
    assert {"prepare_bottle", "list_active", "cleanup"} <= idempotent
    assert not {"launch_bottle", "exec", "stop_bottle"} & idempotent


async def test_every_input_parameter_has_a_description(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        for name, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"


async def test_the_context_parameter_is_not_part_of_any_schema(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        assert "ctx" not in tool.input_schema.get("properties", {})


# -- the round trip --------------------------------------------------------------------------------


async def test_prepare_launch_exec_copy_list_stop_cleanup_round_trip(
    client: Client, service: BottleService, world: FakeWorld, tmp_path: Path
) -> None:
    plan = await ok(client, "prepare_bottle", agent="worker")
    assert plan["agent"] == "worker" and plan["backend"] == "fake"
    assert plan["capabilities_dropped"] == ["ALL"]
    assert [s["name"] for s in plan["skills"]] == ["review"]
    assert world.objects == {}, "prepare creates nothing"

    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    with anyio.fail_after(10):
        launched = await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}, progress_callback=on_progress)
    assert not launched.is_error, text_of(launched)
    assert launched.structured_content is not None
    bottle_id = launched.structured_content["bottle_id"]
    assert launched.structured_content["status"] == "running"
    assert launched.structured_content["runtime"] == plan["runtime"]["effective"]
    assert messages == ["creating", "ready", f"bottle {bottle_id} is running"]

    res = await ok(client, "exec", bottle_id=bottle_id, command="echo hello bottle")
    assert (res["exit_code"], res["stdout"], res["stderr"], res["truncated"], res["timed_out"]) == (
        0,
        "hello bottle\n",
        "",
        False,
        False,
    )

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("payload\n")
    copied = await ok(client, "cp_in", bottle_id=bottle_id, host_path="data", bottle_path="/workspace/in")
    assert (copied["files"], copied["directories"], copied["bytes"]) == (1, 1, 8)
    assert copied["host_path"] == str((tmp_path / "data").resolve())
    res = await ok(client, "exec", bottle_id=bottle_id, command="cat /workspace/in/input.txt")
    assert res["stdout"] == "payload\n"

    active = await ok(client, "list_active")
    assert active["this_server"] == service.instance.id
    assert [(b["bottle_id"], b["owner"]) for b in active["bottles"]] == [(bottle_id, "this-server")]

    stopped = await ok(client, "stop_bottle", bottle_id=bottle_id)
    assert stopped["bottle_id"] == bottle_id
    assert len(stopped["removed"]) == 2
    assert world.objects == {}
    assert (await ok(client, "list_active"))["bottles"] == []

    report = await ok(client, "cleanup")
    assert report == {
        "dry_run": False,
        "summary": "removed 0, kept 0, failed 0",
        "removed": [],
        "kept": [],
        "failed": [],
    }


async def test_a_non_zero_exit_is_data_not_an_error(client: Client) -> None:
    bottle_id = await launch(client)
    res = await ok(client, "exec", bottle_id=bottle_id, command="exit 3")
    assert res["exit_code"] == 3
    assert not res["timed_out"]
    res = await ok(client, "exec", bottle_id=bottle_id, command="no-such-program")
    assert res["exit_code"] == 127
    assert "not found" in res["stderr"]


async def test_output_over_the_cap_is_cut_and_reported(client: Client) -> None:
    bottle_id = await launch(client)
    res = await ok(client, "exec", bottle_id=bottle_id, command="yes")
    assert res["truncated"] is True
    assert res["output_cap_bytes"] == OUTPUT_CAP
    assert res["stdout_bytes"] > OUTPUT_CAP
    assert any("cut" in note for note in res["notes"])
    # The head and the tail are kept around a marker naming the file that holds all of it.
    head, _, tail = res["stdout"].partition("\n[... stdout cut here")
    assert head.startswith("y\ny\n") and tail.endswith("y\n"), res["stdout"][:200]
    assert res["stdout_path"] in tail.partition("...]\n")[0]
    assert res["stdout_bytes"] > 30 * OUTPUT_CAP and len(json.dumps(res["stdout"])) < 2 * 16 * 1024
    assert list(res)[:3] == ["exit_code", "timed_out", "truncated"] and list(res)[-2:] == ["stdout", "stderr"]


async def test_a_command_over_its_timeout_is_reported_as_timed_out(client: Client) -> None:
    bottle_id = await launch(client)
    res = await ok(client, "exec", bottle_id=bottle_id, command="sleep 30", timeout_s=0.05)
    assert res["timed_out"] is True
    assert res["exit_code"] is None


async def test_control_characters_in_output_come_back_escaped(client: Client) -> None:
    bottle_id = await launch(client)
    res = await ok(client, "exec", bottle_id=bottle_id, command=r"printf '\x1b[2Jgone\x00'")
    assert res["stdout"] == "\\x1b[2Jgone\\x00"
    assert res["notes"]


async def test_launch_says_what_was_provisioned_without_credential_values(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOTTLE_MCP_TEST_TOKEN", "value-that-must-not-show-9f2e")
    plan = await call(client, "prepare_bottle", agent="worker")
    assert "value-that-must-not-show-9f2e" not in text_of(plan)
    assert plan.structured_content is not None
    [cred] = plan.structured_content["credentials"]
    assert (cred["name"], cred["present"], cred["in_bottle"]) == ("BOTTLE_MCP_TEST_TOKEN", True, "stand-in")
    launched = await call(client, "launch_bottle", plan_id=plan.structured_content["plan_id"])
    assert launched.structured_content is not None
    assert "credential BOTTLE_MCP_TEST_TOKEN (stand-in)" in launched.structured_content["provisioned"]
    assert "value-that-must-not-show-9f2e" not in text_of(launched)


# -- errors the agent can act on ------------------------------------------------------------------


async def test_an_unknown_plan_id_says_to_prepare_again(client: Client) -> None:
    text = await fails(client, "launch_bottle", plan_id="p-000000000000")
    assert "no plan with id 'p-000000000000'" in text
    assert "Call prepare_bottle again" in text


async def test_an_unknown_agent_lists_the_known_ones(client: Client) -> None:
    text = await fails(client, "prepare_bottle", agent="boss")
    assert "no agent named 'boss'" in text and "known agents: worker" in text


async def test_an_unknown_bottle_says_to_list_or_launch(client: Client) -> None:
    for tool, extra in (
        ("exec", {"command": "true"}),
        ("cp_in", {"host_path": ".", "bottle_path": "/workspace/x"}),
        ("stop_bottle", {}),
    ):
        text = await fails(client, tool, bottle_id="b-nothere", **extra)
        assert "no bottle 'b-nothere' belongs to this server" in text
        assert "list_active" in text


async def test_a_bottle_of_another_server_cannot_be_driven(
    client: Client, manifest_path: Path, world: FakeWorld
) -> None:
    other = make_service(manifest_path, world)
    plan = await other.prepare("worker")
    theirs = (await other.launch(plan.plan_id)).bottle_id
    for tool, extra in (("exec", {"command": "echo hi"}), ("stop_bottle", {})):
        text = await fails(client, tool, bottle_id=theirs, **extra)
        assert "belongs to another server instance" in text
        assert other.instance.id in text
        assert "prepare_bottle and launch_bottle" in text
    assert [b.bottle_id for b in await other.list_active()] == [theirs], "their bottle is untouched"
    owners = {b["bottle_id"]: b["owner"] for b in (await ok(client, "list_active"))["bottles"]}
    assert owners == {theirs: "other-server"}
    await other.aclose()


async def test_a_bottle_removed_behind_the_servers_back_is_reported_gone_then_forgotten(
    client: Client, world: FakeWorld
) -> None:
    bottle_id = await launch(client)
    container = next(o.id for o in world.objects.values() if o.kind == "container")
    del world.objects[container]
    text = await fails(client, "exec", bottle_id=bottle_id, command="echo hi")
    assert f"bottle {bottle_id!r} is gone" in text
    assert "launch a new bottle" in text
    assert world.objects == {}, "what the gone bottle owned is removed"
    text = await fails(client, "exec", bottle_id=bottle_id, command="echo hi")
    assert "no bottle" in text


async def test_a_plan_made_before_the_manifest_changed_is_refused_as_stale(
    client: Client, manifest_path: Path, world: FakeWorld
) -> None:
    plan = await ok(client, "prepare_bottle", agent="worker")
    manifest_path.write_text(MANIFEST.replace("Be brief.", "Be thorough."))
    text = await fails(client, "launch_bottle", plan_id=plan["plan_id"])
    assert f"plan {plan['plan_id']!r} no longer matches the manifest" in text
    assert "call prepare_bottle again" in text
    assert world.objects == {}
    fresh = await ok(client, "prepare_bottle", agent="worker")
    await ok(client, "launch_bottle", plan_id=fresh["plan_id"])


async def test_a_plan_made_before_a_skill_changed_is_refused_as_stale(client: Client, tmp_path: Path) -> None:
    plan = await ok(client, "prepare_bottle", agent="worker")
    (tmp_path / "skills" / "review" / "extra.md").write_text("new instructions\n")
    text = await fails(client, "launch_bottle", plan_id=plan["plan_id"])
    assert "no longer matches" in text


async def test_a_manifest_broken_on_disk_is_reported_with_its_path(client: Client, manifest_path: Path) -> None:
    manifest_path.write_text(MANIFEST + "\n[agents.worker.oops\n")
    text = await fails(client, "prepare_bottle", agent="worker")
    assert str(manifest_path) in text
    assert "not valid TOML" in text


async def test_a_missing_image_is_a_plan_warning_and_a_launch_error(client: Client, world: FakeWorld) -> None:
    world.missing_images.add("bottle-mcp/worker:latest")
    plan = await ok(client, "prepare_bottle", agent="worker")
    assert plan["image_present"] is False
    assert any("bottle-mcp/worker:latest" in w for w in plan["warnings"])
    text = await fails(client, "launch_bottle", plan_id=plan["plan_id"])
    assert "image 'bottle-mcp/worker:latest' is not present on the engine" in text
    assert world.objects == {}


async def test_host_paths_outside_the_roots_are_refused(client: Client, tmp_path: Path) -> None:
    bottle_id = await launch(client)
    evil = tmp_path.parent / (tmp_path.name + "-evil")
    evil.mkdir(exist_ok=True)
    (tmp_path / "escape").symlink_to(evil)
    for host_path in ("/etc/passwd", "../", str(evil), "escape"):
        text = await fails(client, "cp_in", bottle_id=bottle_id, host_path=host_path, bottle_path="/workspace/x")
        assert "outside the allowed roots" in text, host_path
        assert str(tmp_path.resolve()) in text


async def test_bad_bottle_paths_are_refused_with_an_example(client: Client, tmp_path: Path) -> None:
    bottle_id = await launch(client)
    (tmp_path / "f.txt").write_text("x")
    text = await fails(client, "cp_in", bottle_id=bottle_id, host_path="f.txt", bottle_path="workspace/f.txt")
    assert "must be absolute" in text and "/workspace/" in text
    text = await fails(client, "exec", bottle_id=bottle_id, command="pwd", workdir="/workspace/../etc")
    assert "workdir" in text and "'..'" in text


@pytest.mark.parametrize(
    ("tool", "arguments", "mentions"),
    [
        ("exec", {"bottle_id": "b-1", "command": "true", "timeout_s": -1}, "timeout_s"),
        ("exec", {"bottle_id": "b-1", "command": "true", "timeout_s": 100000}, "timeout_s"),
        ("exec", {"bottle_id": "b-1"}, "command"),
        ("exec", {"bottle_id": "b-1", "command": ["echo"]}, "command"),
        ("prepare_bottle", {"agent": "x" * 65}, "agent"),
        ("cleanup", {"dry_run": "sometimes"}, "dry_run"),
    ],
    ids=["negative-timeout", "huge-timeout", "missing-command", "command-not-a-string", "long-agent", "bad-bool"],
)
async def test_bad_arguments_come_back_as_tool_errors_naming_the_argument(
    client: Client, tool: str, arguments: dict[str, Any], mentions: str
) -> None:
    text = await fails(client, tool, **arguments)
    assert mentions in text


async def test_launch_refuses_past_the_bottle_limit(client: Client) -> None:
    for _ in range(3):
        await launch(client)
    plan = await ok(client, "prepare_bottle", agent="worker")
    text = await fails(client, "launch_bottle", plan_id=plan["plan_id"])
    assert "max_bottles" in text and "stop_bottle" in text


async def test_an_unknown_tool_is_a_tool_error(client: Client) -> None:
    assert "nope" in await fails(client, "nope")


# -- other instances, cleanup and shutdown ---------------------------------------------------------


async def launch_as(instance: Instance, world: FakeWorld, manifest_path: Path) -> str:
    svc = make_service(manifest_path, world, instance)
    plan = await svc.prepare("worker")
    return (await svc.launch(plan.plan_id)).bottle_id


async def test_cleanup_removes_orphans_of_dead_servers_and_keeps_live_ones(
    client: Client, service: BottleService, world: FakeWorld, manifest_path: Path
) -> None:
    me = Instance.current()
    rebooted = replace(me, id="dead-boot", boot_id="an-earlier-boot")
    reused_pid = replace(me, id="dead-pid", start_ticks=str(int(me.start_ticks) + 1))
    alive = Instance.current()
    remote = replace(me, id="remote", host=me.host + "-elsewhere")
    dead_bottles = {await launch_as(rebooted, world, manifest_path), await launch_as(reused_pid, world, manifest_path)}
    alive_bottle = await launch_as(alive, world, manifest_path)
    remote_bottle = await launch_as(remote, world, manifest_path)
    mine = await launch(client)

    owners = {b["bottle_id"]: b["owner"] for b in (await ok(client, "list_active"))["bottles"]}
    assert owners == {
        **dict.fromkeys(dead_bottles, "orphaned"),
        alive_bottle: "other-server",
        remote_bottle: "unknown",
        mine: "this-server",
    }

    before = dict(world.objects)
    dry = await ok(client, "cleanup", dry_run=True)
    assert dry["dry_run"] is True
    assert {i["bottle_id"] for i in dry["removed"]} == dead_bottles
    assert world.objects == before, "a dry run removes nothing"

    report = await ok(client, "cleanup")
    assert {i["bottle_id"] for i in report["removed"]} == dead_bottles
    assert {i["kind"] for i in report["removed"]} == {"container", "volume"}
    assert {i["bottle_id"] for i in report["kept"]} == {alive_bottle, remote_bottle, mine}
    assert report["failed"] == []
    remaining = {o.labels[L.BOTTLE] for o in world.objects.values()}
    assert remaining == {alive_bottle, remote_bottle, mine}

    again = await ok(client, "cleanup")
    assert again["removed"] == []
    res = await ok(client, "exec", bottle_id=mine, command="echo still here")
    assert res["stdout"] == "still here\n"


async def test_leaving_the_session_removes_this_servers_bottles_only(
    service: BottleService, world: FakeWorld, manifest_path: Path, mode: str
) -> None:
    other = Instance.current()
    theirs = await launch_as(other, world, manifest_path)
    async with serve(service, mode) as client:
        mine = {await launch(client), await launch(client)}
        assert len(objects_of(world, service.instance)) == 4
    assert objects_of(world, service.instance) == []
    assert {o.labels[L.BOTTLE] for o in world.objects.values()} == {theirs}
    assert mine.isdisjoint(o.labels[L.BOTTLE] for o in world.objects.values())
    assert service.live_bottles == []


async def test_a_stopped_bottle_is_gone_for_good(client: Client, world: FakeWorld) -> None:
    bottle_id = await launch(client)
    await ok(client, "stop_bottle", bottle_id=bottle_id)
    assert world.objects == {}
    text = await fails(client, "stop_bottle", bottle_id=bottle_id)
    assert "no bottle" in text


class EngineWithLatency(FakeBackend):
    """A fake engine whose launch yields to the event loop, as a real engine call does."""

    async def launch(self, plan: BottlePlan, spec: BottleSpec, progress: Progress = _no_progress) -> Bottle:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        return await super().launch(plan, spec, progress)


async def test_concurrent_launches_never_exceed_the_bottle_limit(manifest_path: Path, world: FakeWorld) -> None:
    cwd = manifest_path.parent
    service = BottleService(
        ServiceConfig(manifest_path=manifest_path, cwd=cwd, host_roots=[cwd]),
        EngineWithLatency(Instance.current(), world),
    )
    plans = [(await service.prepare("worker")).plan_id for _ in range(5)]
    refused: list[str] = []

    async def launch_one(plan_id: str) -> None:
        try:
            await service.launch(plan_id)
        except LimitError as e:
            refused.append(str(e))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for plan_id in plans:
                    tg.start_soon(launch_one, plan_id)
        assert len(service.live_bottles) == 3
        assert len(refused) == 2
    finally:
        await service.aclose()


async def test_egress_log_of_an_offline_bottle_is_empty_and_of_others_is_refused(
    client: Client, manifest_path: Path, world: FakeWorld
) -> None:
    bottle_id = await launch(client)
    log = await ok(client, "egress_log", bottle_id=bottle_id)
    assert log == {
        "bottle_id": bottle_id,
        "total": 0,
        "first": 0,
        "next_cursor": None,
        "allow": [],
        "decisions": [],
        "denied": 0,
        "dropped": 0,
    }
    other = make_service(manifest_path, world)
    theirs = (await other.launch((await other.prepare("worker")).plan_id)).bottle_id
    assert "belongs to another server instance" in await fails(client, "egress_log", bottle_id=theirs)
    assert "limit" in await fails(client, "egress_log", bottle_id=bottle_id, limit=0)
    await other.aclose()
