"""What counts as more than the offline default, and which policy is in force."""

from __future__ import annotations

from pathlib import Path

import pytest

from bottle_mcp.approval import decide, effective_policy, elevations
from bottle_mcp.backends.fake import FakeBackend, FakeWorld
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import load_manifest
from bottle_mcp.models import BottlePlan, BottleSpec
from tests.conftest import ManifestFactory

pytestmark = pytest.mark.anyio

AGENT = """
[agents.worker]
bottle = "b"
command = ["true"]
{agent_extra}
"""


async def plan_for(
    write_manifest: ManifestFactory,
    bottle_extra: str = "",
    agent_extra: str = "",
    *,
    copy_cwd: bool = False,
    cwd: Path = Path(),
    runtimes: frozenset[str] = frozenset({"runc"}),
) -> BottlePlan:
    path = write_manifest(
        f'[bottles.b]\nimage = "bottle-mcp/worker:latest"\n{bottle_extra}\n' + AGENT.format(agent_extra=agent_extra)
    )
    backend = FakeBackend(Instance.current(), FakeWorld(runtimes=set(runtimes)))
    return await backend.prepare(BottleSpec(manifest=load_manifest(path), agent="worker", copy_cwd=copy_cwd, cwd=cwd))


async def test_the_offline_default_grants_nothing_more(write_manifest: ManifestFactory) -> None:
    assert elevations(await plan_for(write_manifest)) == []
    # `auto` that ends on runc because the engine has no gVisor is that engine's default, not a downgrade.
    assert elevations(await plan_for(write_manifest, 'runtime = "auto"')) == []
    assert elevations(await plan_for(write_manifest, 'runtime = "runsc"', runtimes=frozenset({"runc", "runsc"}))) == []


@pytest.mark.parametrize(
    ("bottle_extra", "agent_extra", "expected"),
    [
        ('network = "egress"\negress = { allow = ["pypi.org"] }', "", "network egress to pypi.org"),
        ("read_only_root = false", "", "writable root file system"),
        ('runtime = "runc"', "", "runtime pinned to runc"),
        ("", 'credentials = ["SOME_TOKEN"]', "credential SOME_TOKEN is forwarded (as a stand-in"),
        (
            'network = "egress"\negress = { allow = ["api.example.com"], credentials = { SOME_TOKEN = '
            '["api.example.com"] } }',
            'credentials = ["SOME_TOKEN"]',
            "credential SOME_TOKEN is used for api.example.com (the bottle holds a stand-in",
        ),
        (
            'real_credentials = ["SOME_TOKEN"]',
            'credentials = ["SOME_TOKEN"]',
            "credential SOME_TOKEN enters the bottle with its real value",
        ),
    ],
)
async def test_each_grant_beyond_the_default_is_named(
    bottle_extra: str, agent_extra: str, expected: str, write_manifest: ManifestFactory
) -> None:
    reasons = elevations(await plan_for(write_manifest, bottle_extra, agent_extra))
    # One line per grant: an egress bottle's credential adds its own line after the network's.
    assert len(reasons) == (2 if "egress" in bottle_extra and agent_extra else 1)
    assert reasons[-1].startswith(expected)


async def test_pinning_runc_counts_even_where_gvisor_exists(write_manifest: ManifestFactory) -> None:
    plan = await plan_for(write_manifest, 'runtime = "runc"', runtimes=frozenset({"runc", "runsc"}))
    assert plan.runtime.effective == "runc"
    assert [r for r in elevations(plan) if "runc" in r]


async def test_upstreams_and_host_copies_are_named(write_manifest: ManifestFactory, tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("not a real key\n")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    plan = await plan_for(
        write_manifest,
        f"""
        [[bottles.b.ssh]]
        host = "box"
        hostname = "box.example.com"
        identity_file = "{key}"

        [[bottles.b.git]]
        name = "origin"
        upstream = "ssh://git@git.example.com/team/repo.git"
        identity_file = "{key}"
        """.replace("\n        ", "\n"),
        copy_cwd=True,
        cwd=repo,
    )
    reasons = elevations(plan)
    assert any(r.startswith("SSH to git@box.example.com:22") for r in reasons)
    assert any(r.startswith("git push to ssh://git@git.example.com/team/repo.git") for r in reasons)
    assert any(r.startswith(f"copies the host repository {repo}") for r in reasons)


async def test_the_command_line_wins_and_the_source_is_named(write_manifest: ManifestFactory) -> None:
    path = write_manifest('[host]\napprove = "never"\n[bottles.b]\nimage = "x:1"\n' + AGENT.format(agent_extra=""))
    lm = load_manifest(path)
    assert effective_policy(None, lm) == ("never", f"set in [host] approve in {path}")
    assert effective_policy("always", lm)[0] == "always"
    plan = await plan_for(write_manifest)
    assert decide(plan, lm, None).required is False
    assert decide(plan, lm, "always").required is True


async def test_elevated_is_the_default_policy(write_manifest: ManifestFactory) -> None:
    plan = await plan_for(write_manifest, 'network = "egress"\negress = { allow = ["pypi.org"] }')
    path = write_manifest('[bottles.b]\nimage = "x:1"\n' + AGENT.format(agent_extra=""), name="other.toml")
    decision = decide(plan, load_manifest(path), None)
    assert (decision.policy, decision.required) == ("elevated", True)
    assert decision.policy_source.startswith("the default of [host] approve")
