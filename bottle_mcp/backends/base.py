"""The backend contract: prepare -> plan -> launch -> bottle -> exec / cp_in -> close.

A backend turns a `BottleSpec` into a reviewed `BottlePlan` (creating nothing),
brings a plan up as a running `Bottle`, and finds and removes what earlier
server instances left behind. `Backend.prepare` is a template method: the
host-side checks every backend needs run first and cannot be skipped; the
backend adds only its own resolution (image, runtime, mounts).
"""

from __future__ import annotations

import json
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from ..credentials import credential_plans
from ..errors import PlanError
from ..labels import Instance
from ..manifest import AgentDef, BottleDef, LoadedManifest
from ..models import (
    BottleInfo,
    BottlePlan,
    BottleSpec,
    CleanupPlan,
    CleanupReport,
    CopyCwdPlan,
    EgressDecision,
    ExecResult,
    GateEvent,
    GitPlan,
    PromptPlan,
    SkillPlan,
    SshPlan,
)
from ..paths import tree_size

Progress = Callable[[str], Awaitable[None]]


async def _no_progress(_: str) -> None:
    return None


class Bottle(Protocol):
    """A running bottle owned by this server."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> BottleInfo: ...

    async def exec(
        self,
        command: str,
        *,
        timeout_s: float,
        workdir: str | None,
        output_cap: int,
        stdin: bytes | None = None,
    ) -> ExecResult:
        """Run `command` with /bin/sh -c. Kills the process in the bottle on timeout or cancellation."""
        ...

    async def put_tar(self, tar: IO[bytes], dest_dir: PurePosixPath) -> None:
        """Unpack a tar stream into `dest_dir` inside the bottle, as the bottle's user."""
        ...

    async def get_tar(self, path: PurePosixPath, *, max_bytes: int) -> bytes:
        """A tar of `path` (file or folder, symlinks stored as links) made inside the bottle.

        Raises PathError when the path does not exist, when a component of it is a symlink,
        or when the tar would be larger than `max_bytes`. The bytes come from the bottle:
        callers must treat every member as hostile.
        """
        ...

    async def close(self) -> list[str]:
        """Remove the bottle and everything it owns; return what was removed. Idempotent."""
        ...

    async def egress_log(self) -> tuple[list[str], list[EgressDecision]]:
        """The egress allow-list and every allow/deny decision so far (both empty without egress)."""
        ...

    async def gate_log(self) -> tuple[dict[str, str], dict[str, str], list[GateEvent]]:
        """Git remotes -> upstreams, ssh aliases -> host:port, and the gate's events (empty without a gate)."""
        ...


class Backend(ABC):
    """Base class of every backend."""

    name: str

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    # -- prepare ---------------------------------------------------------------

    async def prepare(self, spec: BottleSpec) -> BottlePlan:
        """Validate the spec on the host, then let the backend resolve the rest. Creates nothing."""
        agent, bottle = self._validate(spec)
        common = self._common_plan_fields(spec, agent, bottle)
        fields = await self._resolve_plan(spec, agent, bottle, common)
        payload = json.dumps(fields, sort_keys=True, default=str)
        return BottlePlan(plan_id=f"p-{secrets.token_hex(6)}", digest=BottlePlan.content_digest(payload), **fields)

    def _validate(self, spec: BottleSpec) -> tuple[AgentDef, BottleDef]:
        m = spec.manifest.manifest
        if spec.agent not in m.agents:
            known = ", ".join(sorted(m.agents)) or "(none)"
            raise PlanError(f"no agent named {spec.agent!r} in {str(spec.manifest.path)!r}; known agents: {known}")
        agent = m.agents[spec.agent]
        bottle = m.bottles[agent.bottle]
        skills_dir = spec.manifest.skills_dir()
        for i, name in enumerate(agent.skills):
            path = skills_dir / name
            if not path.is_dir():
                raise PlanError(
                    f"agents.{spec.agent}.skills[{i}]: skill {name!r} not found at {str(path)!r}; "
                    f"create that folder (with a SKILL.md) or set [host] skills_dir in the manifest"
                )
            if not Path(os.path.realpath(path)).is_relative_to(skills_dir.resolve()):
                raise PlanError(
                    f"agents.{spec.agent}.skills[{i}]: {str(path)!r} is a link that leaves {str(skills_dir)!r}; "
                    "replace the link with the folder itself"
                )
        for kind, i, identity_file in bottle.key_files():
            key = spec.manifest.resolve(identity_file)
            if not os.access(key, os.R_OK):
                raise PlanError(
                    f"bottles.{agent.bottle}.{kind}[{i}].identity_file: {str(key)!r} is missing or "
                    "unreadable; fix the path or the file's permissions"
                )
        if agent.prompt_file is not None:
            pf = spec.manifest.resolve(agent.prompt_file)
            if not os.access(pf, os.R_OK):
                raise PlanError(f"agents.{spec.agent}.prompt_file: {str(pf)!r} is missing or unreadable")
        if spec.copy_cwd:
            find_repo(spec.cwd)
        return agent, bottle

    def _common_plan_fields(self, spec: BottleSpec, agent: AgentDef, bottle: BottleDef) -> dict[str, object]:
        lm = spec.manifest
        warnings: list[str] = []
        prompt: PromptPlan | None = None
        text = prompt_text(spec)
        if text is not None:
            import hashlib

            prompt = PromptPlan(
                source="inline" if agent.prompt is not None else str(lm.resolve(agent.prompt_file or "")),
                bytes=len(text.encode()),
                sha256=hashlib.sha256(text.encode()).hexdigest(),
                bottle_path=f"{bottle.home}/.bottle-mcp/prompt.md",
            )
        skills = []
        for name in agent.skills:
            files, size = tree_size(lm.skills_dir() / name)
            skills.append(
                SkillPlan(
                    name=name,
                    host_path=str(lm.skills_dir() / name),
                    bottle_path=f"{bottle.home}/.claude/skills/{name}",
                    files=files,
                    bytes=size,
                )
            )
        creds, cred_warnings = credential_plans(bottle, list(agent.credentials), os.environ)
        warnings += cred_warnings
        warnings += [
            f"credential {c.name} is not set in the server's environment; the agent will run without it"
            for c in creds
            if not c.present
        ]
        copy: CopyCwdPlan | None = None
        if spec.copy_cwd:
            repo = find_repo(spec.cwd)
            files, size = tree_size(repo / ".git")
            copy = CopyCwdPlan(host_repo=str(repo), bottle_path=f"{bottle.workdir}/.git", files=files, bytes=size)
        return {
            "backend": self.name,
            "agent": spec.agent,
            "bottle": agent.bottle,
            "manifest": str(lm.path),
            "manifest_sha256": lm.sha256,
            "user": bottle.user,
            "home": bottle.home,
            "workdir": bottle.workdir,
            "environment": dict(bottle.env),
            "credentials": creds,
            "command": list(agent.command),
            "prompt": prompt,
            "skills": skills,
            "ssh": [
                SshPlan(
                    host=s.host,
                    hostname=s.hostname,
                    port=s.port,
                    user=s.user,
                    identity_file=str(lm.resolve(s.identity_file)),
                    host_key_pinned=s.known_host_key is not None,
                )
                for s in bottle.ssh
            ],
            "git": [
                GitPlan(
                    name=g.name,
                    upstream=g.upstream,
                    identity_file=str(lm.resolve(g.identity_file)),
                    host_key_pinned=g.known_host_key is not None,
                )
                for g in bottle.git
            ],
            "copy_cwd": copy,
            "warnings": warnings,
        }

    @abstractmethod
    async def _resolve_plan(
        self, spec: BottleSpec, agent: AgentDef, bottle: BottleDef, common: dict[str, object]
    ) -> dict[str, object]:
        """Add the backend's own fields (image, runtime, mounts, network, resources...) to `common`."""

    # -- launch and the rest -------------------------------------------------------

    @abstractmethod
    async def launch(self, plan: BottlePlan, spec: BottleSpec, progress: Progress = _no_progress) -> Bottle:
        """Bring the plan up and provision it. On failure, remove whatever was created, then raise."""

    @abstractmethod
    async def list_active(self) -> list[BottleInfo]:
        """Every bottle on this backend, this server's and others'."""

    @abstractmethod
    async def prepare_cleanup(self) -> CleanupPlan:
        """Find what server instances that are gone left behind. No side effects."""

    @abstractmethod
    async def cleanup(self, plan: CleanupPlan) -> CleanupReport:
        """Remove everything in `plan.remove`."""

    @abstractmethod
    async def check_alive(self, bottle: Bottle) -> None:
        """Raise BottleGoneError if the bottle no longer runs."""

    async def keep_warm(self, manifest: LoadedManifest, sizes: dict[str, int]) -> None:  # noqa: B027 - optional
        """Keep `sizes[bottle]` started spares of each bottle definition until cancelled, then remove them.

        Launches claim spares when they fit their plan. A backend without pools returns at once and
        every launch is cold.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release engine connections."""


def prompt_text(spec: BottleSpec) -> str | None:
    agent = spec.manifest.manifest.agents[spec.agent]
    if agent.prompt is not None:
        return agent.prompt
    if agent.prompt_file is not None:
        return spec.manifest.resolve(agent.prompt_file).read_text(encoding="utf-8")
    return None


def find_repo(start: Path) -> Path:
    """The git work tree holding `start` (whose .git is a folder)."""
    here = start.resolve()
    for d in (here, *here.parents):
        if (d / ".git").is_dir():
            return d
        if (d / ".git").exists():
            raise PlanError(
                f"{str(d)!r} is a git worktree or submodule (its .git is a file); copy_cwd needs a plain repository"
            )
    raise PlanError(f"copy_cwd: no git repository at or above {str(here)!r}; start the server inside a repository")
