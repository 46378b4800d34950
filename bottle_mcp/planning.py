"""Host-side planning: what every backend's plan holds before the backend adds its own part.

`Backend.prepare` calls these in order: `validate` (the checks no backend may skip),
`host_plan` (prompt, skills, credentials, keys, copy_cwd: all read on the host),
then the backend's `_resolve_plan` (a `BackendPlan`: image, runtime, mounts, network),
and `assemble` joins the parts with the security posture, which is the same for
every backend and written down once, here (`HARDENING`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .credentials import credential_plans
from .errors import PlanError
from .manifest import AgentDef, BottleDef, format_size, parse_size
from .models import (
    BottlePlan,
    BottleSpec,
    CopyCwdPlan,
    CredentialPlan,
    GatePlan,
    GitPlan,
    MountPlan,
    NetworkPlan,
    PromptPlan,
    ResourcePlan,
    RuntimePlan,
    SkillPlan,
    SshPlan,
)
from .paths import tree_size

T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]
"""Runs a blocking function with its arguments off the event loop: `await offload(fn, *args)`."""


@dataclass(frozen=True)
class Hardening:
    """The security posture of every bottle (and, in the Docker backend, of every sidecar)."""

    capabilities_dropped: tuple[str, ...] = ("ALL",)
    capabilities_added: tuple[str, ...] = ()
    no_new_privileges: bool = True
    seccomp: str = "engine default profile"
    init: bool = True


HARDENING = Hardening()


@dataclass(frozen=True)
class HostPlan:
    """The part of a plan read on the host, the same for every backend."""

    prompt: PromptPlan | None
    skills: tuple[SkillPlan, ...]
    credentials: tuple[CredentialPlan, ...]
    ssh: tuple[SshPlan, ...]
    git: tuple[GitPlan, ...]
    copy_cwd: CopyCwdPlan | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class BackendPlan:
    """The part of a plan a backend resolves: where and how the bottle runs."""

    image: str
    image_present: bool
    runtime: RuntimePlan
    read_only_root: bool
    mounts: tuple[MountPlan, ...]
    network: NetworkPlan
    resources: ResourcePlan
    gates: GatePlan | None = None
    host_mounts: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def validate(spec: BottleSpec) -> tuple[AgentDef, BottleDef]:
    """The agent exists; its skills, keys and prompt file are readable; copy_cwd has a repository."""
    m = spec.manifest.manifest
    if spec.agent not in m.agents:
        known = ", ".join(sorted(m.agents)) or "(none)"
        raise PlanError(f"no agent named {spec.agent!r} in {str(spec.manifest.path)!r}; known agents: {known}")
    agent = m.agents[spec.agent]
    bottle = m.bottles[agent.bottle]
    _check_skills(spec, agent)
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


def _check_skills(spec: BottleSpec, agent: AgentDef) -> None:
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


async def host_plan(spec: BottleSpec, agent: AgentDef, bottle: BottleDef, offload: Offload) -> HostPlan:
    """Read what the plan needs from the host; tree walks run through `offload`, off the event loop."""
    lm = spec.manifest
    prompt: PromptPlan | None = None
    text = prompt_text(spec)
    if text is not None:
        prompt = PromptPlan(
            source="inline" if agent.prompt is not None else str(lm.resolve(agent.prompt_file or "")),
            bytes=len(text.encode()),
            sha256=hashlib.sha256(text.encode()).hexdigest(),
            bottle_path=f"{bottle.home}/.bottle-mcp/prompt.md",
        )
    skills = []
    for name in agent.skills:
        files, size = await offload(tree_size, lm.skills_dir() / name)
        skills.append(
            SkillPlan(
                name=name,
                host_path=str(lm.skills_dir() / name),
                bottle_path=f"{bottle.home}/.claude/skills/{name}",
                files=files,
                bytes=size,
            )
        )
    cred_plans, cred_warnings = credential_plans(bottle, list(agent.credentials), os.environ)
    creds = tuple(cred_plans)
    copy: CopyCwdPlan | None = None
    if spec.copy_cwd:
        repo = find_repo(spec.cwd)
        files, size = await offload(tree_size, repo / ".git")
        copy = CopyCwdPlan(host_repo=str(repo), bottle_path=f"{bottle.workdir}/.git", files=files, bytes=size)
    return HostPlan(
        prompt=prompt,
        skills=tuple(skills),
        credentials=creds,
        ssh=tuple(
            SshPlan(
                host=s.host,
                hostname=s.hostname,
                port=s.port,
                user=s.user,
                identity_file=str(lm.resolve(s.identity_file)),
                host_key_pinned=s.known_host_key is not None,
            )
            for s in bottle.ssh
        ),
        git=tuple(
            GitPlan(
                name=g.name,
                upstream=g.upstream,
                identity_file=str(lm.resolve(g.identity_file)),
                host_key_pinned=g.known_host_key is not None,
            )
            for g in bottle.git
        ),
        copy_cwd=copy,
        warnings=(
            *cred_warnings,
            *(
                f"credential {c.name} is not set in the server's environment; the agent will run without it"
                for c in creds
                if not c.present
            ),
        ),
    )


def resources(bottle: BottleDef) -> ResourcePlan:
    res = bottle.resources
    return ResourcePlan(
        cpus=res.cpus,
        memory=format_size(res.memory_bytes),
        memory_bytes=res.memory_bytes,
        pids=res.pids,
        tmp_size=format_size(parse_size(res.tmp_size)),
        home_size=format_size(parse_size(res.home_size)),
    )


def assemble(backend: str, spec: BottleSpec, host: HostPlan, own: BackendPlan) -> BottlePlan:
    """The reviewed plan: host part, backend part and the posture, with a digest of the whole."""
    agent = spec.manifest.manifest.agents[spec.agent]
    bottle = spec.manifest.manifest.bottles[agent.bottle]
    fields: dict[str, Any] = {
        "gates": own.gates,
        "backend": backend,
        "agent": spec.agent,
        "bottle": agent.bottle,
        "manifest": str(spec.manifest.path),
        "manifest_sha256": spec.manifest.sha256,
        "user": bottle.user,
        "home": bottle.home,
        "workdir": bottle.workdir,
        "environment": dict(bottle.env),
        "credentials": list(host.credentials),
        "command": list(agent.command),
        "prompt": host.prompt,
        "skills": list(host.skills),
        "ssh": list(host.ssh),
        "git": list(host.git),
        "copy_cwd": host.copy_cwd,
        "warnings": [*host.warnings, *own.warnings],
        "image": own.image,
        "image_present": own.image_present,
        "runtime": own.runtime,
        "capabilities_dropped": list(HARDENING.capabilities_dropped),
        "capabilities_added": list(HARDENING.capabilities_added),
        "no_new_privileges": HARDENING.no_new_privileges,
        "seccomp": HARDENING.seccomp,
        "read_only_root": own.read_only_root,
        "init": HARDENING.init,
        "mounts": list(own.mounts),
        "host_mounts": list(own.host_mounts),
        "network": own.network,
        "resources": own.resources,
    }
    payload = json.dumps(fields, sort_keys=True, default=str)
    return BottlePlan(plan_id=f"p-{secrets.token_hex(6)}", digest=BottlePlan.content_digest(payload), **fields)


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
