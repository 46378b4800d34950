"""The backend contract: selection by name, and the host-side checks every backend's prepare runs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from bottle_mcp.backends import BACKENDS, get_backend
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.fake import FakeBackend, FakeWorld
from bottle_mcp.errors import BackendNotFoundError, PlanError
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import LoadedManifest, load_manifest
from bottle_mcp.models import BottlePlan, BottleSpec
from bottle_mcp.planning import HARDENING

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

SECRET_VALUE = "sk-test-3c1d-never-in-a-plan"

MANIFEST = """\
[host]
skills_dir = "skills"

[bottles.offline]
image = "bottle-mcp/worker:latest"
env = {{ LANG = "C.UTF-8" }}

[[bottles.offline.ssh]]
host = "box"
hostname = "box.example.org"
identity_file = "keys/ssh"

[[bottles.offline.git]]
name = "origin"
upstream = "ssh://git@git.example.org/o/r.git"
identity_file = "keys/git"

[agents.worker]
bottle = "offline"
command = ["true"]
prompt_file = "prompt.md"
skills = {skills}
credentials = ["BOTTLE_MCP_TEST_TOKEN", "BOTTLE_MCP_TEST_UNSET"]
"""


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    (tmp_path / "skills" / "review").mkdir(parents=True)
    (tmp_path / "skills" / "review" / "SKILL.md").write_text("# Review\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ssh").write_text("ssh key\n")
    (tmp_path / "keys" / "git").write_text("git key\n")
    (tmp_path / "prompt.md").write_text("Be brief.\n")
    return tmp_path


def load(write_manifest: ManifestFactory, skills: str = '["review"]') -> LoadedManifest:
    return load_manifest(write_manifest(MANIFEST.format(skills=skills)))


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(Instance.current(), FakeWorld())


def spec(lm: LoadedManifest, cwd: Path, *, copy_cwd: bool = False, agent: str = "worker") -> BottleSpec:
    return BottleSpec(manifest=lm, agent=agent, copy_cwd=copy_cwd, cwd=cwd)


# -- selection -------------------------------------------------------------------------------------


def test_docker_is_the_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOTTLE_MCP_BACKEND", raising=False)
    assert isinstance(get_backend(Instance.current()), DockerBackend)


def test_the_environment_chooses_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTTLE_MCP_BACKEND", "fake")
    assert isinstance(get_backend(Instance.current()), FakeBackend)


def test_an_explicit_name_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTTLE_MCP_BACKEND", "fake")
    assert isinstance(get_backend(Instance.current(), "docker"), DockerBackend)


def test_an_unknown_backend_name_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTTLE_MCP_BACKEND", "podman")
    with pytest.raises(BackendNotFoundError) as info:
        get_backend(Instance.current())
    message = str(info.value)
    assert "'podman'" in message and "BOTTLE_MCP_BACKEND" in message
    for known in BACKENDS:
        assert known in message


# -- host-side validation in the template method ---------------------------------------------------


async def test_plan_from_a_valid_spec_creates_nothing(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest)
    plan = await backend.prepare(spec(lm, manifest_dir))
    assert backend.world.objects == {}
    assert plan.backend == "fake"
    assert (plan.agent, plan.bottle, plan.manifest_sha256) == ("worker", "offline", lm.sha256)
    assert [s.name for s in plan.skills] == ["review"]
    assert plan.skills[0].files == 1
    assert plan.prompt is not None
    assert plan.prompt.source == str(manifest_dir / "prompt.md")
    assert plan.prompt.bytes == len(b"Be brief.\n")
    assert [s.identity_file for s in plan.ssh] == [str(manifest_dir / "keys" / "ssh")]
    assert [g.name for g in plan.git] == ["origin"]
    assert plan.environment == {"LANG": "C.UTF-8"}


async def test_an_unknown_agent_is_refused_with_the_known_ones(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    with pytest.raises(PlanError, match=r"no agent named 'boss'.*known agents: worker"):
        await backend.prepare(spec(load(write_manifest), manifest_dir, agent="boss"))


async def test_a_missing_skill_is_refused_with_its_toml_path_and_a_fix(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest, skills='["review", "absent"]')
    with pytest.raises(PlanError) as info:
        await backend.prepare(spec(lm, manifest_dir))
    message = str(info.value)
    assert message.startswith("agents.worker.skills[1]: skill 'absent' not found")
    assert str(manifest_dir / "skills" / "absent") in message
    assert "create that folder" in message and "skills_dir" in message


async def test_a_skill_linked_from_outside_the_skills_dir_is_refused(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    elsewhere = manifest_dir / "elsewhere"
    elsewhere.mkdir()
    (manifest_dir / "skills" / "linked").symlink_to(elsewhere)
    lm = load(write_manifest, skills='["linked"]')
    with pytest.raises(PlanError, match=r"agents\.worker\.skills\[0\]: .* is a link that leaves") as info:
        await backend.prepare(spec(lm, manifest_dir))
    assert "replace the link with the folder itself" in str(info.value)


async def test_a_skill_linked_within_the_skills_dir_is_accepted(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    (manifest_dir / "skills" / "alias").symlink_to("review")
    plan = await backend.prepare(spec(load(write_manifest, skills='["alias"]'), manifest_dir))
    assert [s.name for s in plan.skills] == ["alias"]


async def test_a_key_file_removed_after_loading_is_refused_at_prepare(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest)
    (manifest_dir / "keys" / "git").unlink()
    with pytest.raises(PlanError) as info:
        await backend.prepare(spec(lm, manifest_dir))
    message = str(info.value)
    assert message.startswith("bottles.offline.git[0].identity_file: ")
    assert str(manifest_dir / "keys" / "git") in message
    assert "fix the path" in message


async def test_a_prompt_file_removed_after_loading_is_refused_at_prepare(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest)
    (manifest_dir / "prompt.md").unlink()
    with pytest.raises(PlanError, match=r"^agents\.worker\.prompt_file: .* is missing or unreadable"):
        await backend.prepare(spec(lm, manifest_dir))


async def test_copy_cwd_outside_a_repository_is_refused(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest)
    with pytest.raises(PlanError, match="no git repository at or above") as info:
        await backend.prepare(spec(lm, manifest_dir, copy_cwd=True))
    assert "start the server inside a repository" in str(info.value)


async def test_copy_cwd_in_a_worktree_whose_git_is_a_file_is_refused(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    (manifest_dir / ".git").write_text("gitdir: /somewhere/else\n")
    with pytest.raises(PlanError, match=r"its \.git is a file"):
        await backend.prepare(spec(load(write_manifest), manifest_dir, copy_cwd=True))


@pytest.fixture
def in_repository(manifest_dir: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(manifest_dir)], check=True)
    (manifest_dir / "sub").mkdir()
    return manifest_dir


async def test_copy_cwd_in_a_repository_plans_its_git_folder(
    backend: FakeBackend, write_manifest: ManifestFactory, in_repository: Path
) -> None:
    manifest_dir = in_repository
    plan = await backend.prepare(spec(load(write_manifest), manifest_dir / "sub", copy_cwd=True))
    assert plan.copy_cwd is not None
    assert plan.copy_cwd.host_repo == str(manifest_dir)
    assert plan.copy_cwd.bottle_path == "/workspace/.git"
    assert plan.copy_cwd.files > 0


# -- plans -----------------------------------------------------------------------------------------


async def test_plans_are_frozen(backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path) -> None:
    plan = await backend.prepare(spec(load(write_manifest), manifest_dir))
    with pytest.raises(pydantic.ValidationError):
        plan.image = "evil:latest"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        plan.network.mode = "egress"  # type: ignore[misc]


async def test_plans_name_credentials_but_never_carry_their_values(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOTTLE_MCP_TEST_TOKEN", SECRET_VALUE)
    monkeypatch.delenv("BOTTLE_MCP_TEST_UNSET", raising=False)
    plan = await backend.prepare(spec(load(write_manifest), manifest_dir))
    assert [(c.name, c.present) for c in plan.credentials] == [
        ("BOTTLE_MCP_TEST_TOKEN", True),
        ("BOTTLE_MCP_TEST_UNSET", False),
    ]
    assert SECRET_VALUE not in plan.model_dump_json()
    assert SECRET_VALUE not in repr(plan)
    assert any("BOTTLE_MCP_TEST_UNSET is not set" in w for w in plan.warnings)
    # Without egress no host can receive it: the bottle gets a stand-in, and the plan says it works nowhere.
    assert [c.in_bottle for c in plan.credentials] == ["stand-in", "stand-in"]
    assert [w for w in plan.warnings if "BOTTLE_MCP_TEST_TOKEN" in w] == [
        "credential BOTTLE_MCP_TEST_TOKEN has no hosts in egress.credentials: the bottle gets a stand-in that no host "
        "accepts (declare its hosts, or list it in real_credentials if the bottle needs the value itself)"
    ]


async def test_the_same_spec_gives_the_same_digest_under_a_new_plan_id(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest)
    first = await backend.prepare(spec(lm, manifest_dir))
    second = await backend.prepare(spec(lm, manifest_dir))
    assert first.plan_id != second.plan_id
    assert first.digest == second.digest


async def test_the_digest_changes_when_a_file_the_plan_names_changes(
    backend: FakeBackend, write_manifest: ManifestFactory, manifest_dir: Path
) -> None:
    lm = load(write_manifest)
    before = await backend.prepare(spec(lm, manifest_dir))
    (manifest_dir / "skills" / "review" / "more.md").write_text("more\n")
    after = await backend.prepare(spec(lm, manifest_dir))
    assert before.digest != after.digest


async def test_a_missing_image_is_a_warning_in_the_plan(write_manifest: ManifestFactory, manifest_dir: Path) -> None:
    backend = FakeBackend(Instance.current(), FakeWorld(missing_images={"bottle-mcp/worker:latest"}))
    plan: BottlePlan = await backend.prepare(spec(load(write_manifest), manifest_dir))
    assert not plan.image_present
    assert any("bottle-mcp/worker:latest" in w for w in plan.warnings)


# -- the host-side walks stay off the event loop; the posture is the one HARDENING states ----------


class RecordingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__(Instance.current(), FakeWorld())
        self.offloaded: list[str] = []

    async def offload(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.offloaded.append(f"{fn.__name__} {Path(args[0]).name}")
        return await super().offload(fn, *args, **kwargs)


async def test_tree_walks_of_prepare_run_off_the_event_loop(
    write_manifest: ManifestFactory, in_repository: Path
) -> None:
    backend = RecordingBackend()
    plan = await backend.prepare(spec(load(write_manifest), in_repository, copy_cwd=True))
    assert plan.copy_cwd is not None
    assert backend.offloaded == ["tree_size review", "tree_size .git"]


async def test_every_backend_states_the_same_posture(write_manifest: ManifestFactory, manifest_dir: Path) -> None:
    plan = await FakeBackend(Instance.current(), FakeWorld()).prepare(spec(load(write_manifest), manifest_dir))
    assert (plan.capabilities_dropped, plan.capabilities_added) == (["ALL"], [])
    assert (plan.no_new_privileges, plan.init, plan.seccomp) == (True, True, HARDENING.seccomp)
