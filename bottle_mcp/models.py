"""Value objects that cross layers: specs in, plans and results out.

These are pydantic models because they are also the MCP tools' structured
output; they are frozen so a plan cannot change after it was reviewed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .frozen import Frozen
from .labels import Liveness
from .manifest import LoadedManifest
from .results import JobInfo
from .textfit import clip, clip_list


@dataclass(frozen=True)
class BottleSpec:
    """What the caller asks for; everything else comes from the manifest."""

    manifest: LoadedManifest
    agent: str
    copy_cwd: bool = False
    cwd: Path = Path()


class RuntimePlan(Frozen):
    requested: Literal["auto", "runc", "runsc"]
    effective: str = Field(description="The runtime that will really run the bottle.")
    reason: str


class MountPlan(Frozen):
    target: str
    kind: Literal["tmpfs", "volume", "bind"]
    read_only: bool
    size: str | None = None
    purpose: str


class NetworkPlan(Frozen):
    mode: Literal["none", "egress"]
    egress_allow: list[str] = Field(default_factory=list)
    effective: Literal["none", "egress-proxy"] = Field(description="What the bottle will really get.")
    note: str = ""
    intercepted: list[str] = Field(
        default_factory=list, description="Allowed hosts whose TLS the proxy decrypts and scans for credentials."
    )
    passthrough: list[str] = Field(default_factory=list, description="Allowed hosts whose TLS passes unopened.")
    credential_hosts: dict[str, list[str]] = Field(
        default_factory=dict, description="Where each forwarded credential may go; anywhere else is refused."
    )
    proxy: str = Field("", description="How the proxy is reached from inside the bottle.")
    allow_private: list[str] = Field(
        default_factory=list,
        description="Non-public destinations (CIDR[:port]) the proxy may connect to; every other non-public "
        "address, and every address of the host and the engine's networks, is refused.",
    )


class EgressDecision(Frozen):
    time: str
    action: Literal["allow", "deny"]
    kind: str = Field(description="CONNECT, HTTP, HTTPS (a request inside an intercepted tunnel), connect, tunnel.")
    host: str
    port: int | str
    reason: str
    method: str | None = None
    path: str | None = None
    tls: str | None = Field(None, description="For CONNECT: 'intercept' or 'passthrough'.")
    count: int = Field(1, description="How many times this very decision was made (denials are aggregated).")
    last_time: str | None = Field(None, description="When an aggregated denial was last made.")
    lengths: dict[str, int] = Field(
        default_factory=dict, description="Original length of each field that was clipped (the bottle chose it)."
    )

    @field_validator("host", "reason", "method", "path")
    @classmethod
    def _short(cls, v: str | None) -> str | None:
        return None if v is None else clip(v, 500, "text")


class EgressLog(Frozen):
    bottle_id: str
    total: int = Field(description="Decisions recorded in all (the list holds one page of them).")
    first: int = Field(0, description="Index of the first decision listed (0 is the oldest recorded).")
    next_cursor: str | None = Field(None, description="Pass it as cursor for the next page; null: nothing newer.")
    allow: list[str] = Field(description="The allow-list in force.")
    decisions: list[EgressDecision] = Field(
        description="Oldest first; by default the latest `limit` that fit. Allowed decisions one by one, denials "
        "aggregated per distinct decision with a count."
    )
    denied: int = Field(0, description="Denied requests in all (each aggregated record counts its repeats).")
    dropped: int = Field(
        0,
        description="Decisions no longer held: allowed ones rotated out of the proxy's log, or denials beyond "
        "the table of distinct ones (only counted).",
    )


@dataclass(frozen=True)
class EgressRecords:
    """What a bottle's egress proxy holds: decisions (clipped, denials aggregated) and what it only counted."""

    decisions: list[EgressDecision]
    denied: int = 0
    dropped: int = 0


class GatePlan(Frozen):
    """How the bottle reaches its git and ssh entries: only through its gate sidecar."""

    image: str
    git_remotes: dict[str, str] = Field(description="Remote name -> the URL the bottle's git uses (the gate).")
    ssh_hosts: dict[str, str] = Field(description="ssh alias -> the loopback port that relays to that host:port only.")
    keys: str = Field(description="Where the keys live (never in the bottle).")
    scanner: str = Field(description="What scans pushed commits before they may leave.")


class GateEvent(Frozen):
    time: str
    kind: Literal["fetch", "hostkey", "pushed", "refused", "upstream-failed", "error"]
    remote: str
    refs: list[str] = Field(default_factory=list)
    upstream: str | None = None
    commits: int | None = Field(None, description="New commits scanned and pushed.")
    detail: str = ""
    findings: list[str] = Field(default_factory=list, description="Why a push was refused (secrets redacted).")
    lengths: dict[str, int] = Field(
        default_factory=dict, description="Original length (characters or items) of each field that was clipped."
    )

    @field_validator("detail")
    @classmethod
    def _short(cls, v: str) -> str:
        return clip(v, 1000, "detail")

    @field_validator("refs", "findings")
    @classmethod
    def _few(cls, v: list[str]) -> list[str]:
        return clip_list([clip(x, 300, "text") for x in v], 3000, "entries")[0]


@dataclass(frozen=True)
class GateRecords:
    """What a bottle's gate holds: its events (clipped) and how many refused pushes it only counted."""

    events: list[GateEvent]
    dropped: int = 0


class GateLog(Frozen):
    bottle_id: str
    total: int = Field(description="Events recorded in all (the list holds one page of them).")
    first: int = Field(0, description="Index of the first event listed (0 is the oldest recorded).")
    next_cursor: str | None = Field(None, description="Pass it as cursor for the next page; null: nothing newer.")
    git_remotes: dict[str, str] = Field(description="Remote name -> upstream URL.")
    ssh_hosts: dict[str, str] = Field(description="ssh alias -> host:port it reaches.")
    events: list[GateEvent] = Field(description="Oldest first; by default the latest `limit` that fit.")
    dropped: int = Field(0, description="Refused pushes the gate only counted (beyond what its log keeps).")


class ResourcePlan(Frozen):
    cpus: float
    memory: str
    memory_bytes: int
    pids: int
    tmp_size: str
    home_size: str
    disk: str = Field("unlimited", description="Hard limit on what the bottle can write to the host's disk.")
    disk_enforced_by: str | None = Field(
        None, description="How the engine enforces the disk limit; None when nothing does (see the warnings)."
    )


class PromptPlan(Frozen):
    source: str = Field(description="'inline' or the host file it comes from.")
    bytes: int
    sha256: str
    bottle_path: str


class SkillPlan(Frozen):
    name: str
    host_path: str
    bottle_path: str
    files: int
    bytes: int


class CredentialPlan(Frozen):
    name: str
    present: bool = Field(description="Whether the server's environment has it now (the value is never shown).")
    in_bottle: Literal["stand-in", "real value"] = Field(
        "stand-in",
        description="What the bottle's variable holds when the server has the credential: a random stand-in "
        "made at launch, or the real value (only when the manifest lists it in real_credentials).",
    )
    substituted_for: list[str] = Field(
        default_factory=list, description="Hosts whose requests get the real value in place of the stand-in."
    )
    body: bool = Field(False, description="Whether request bodies are substituted too (else headers only).")
    note: str = ""
    refused: str | None = Field(None, description="Why launch refuses this plan because of this credential.")


class SshPlan(Frozen):
    host: str
    hostname: str
    port: int
    user: str
    identity_file: str
    host_key_pinned: bool


class GitPlan(Frozen):
    name: str
    upstream: str
    identity_file: str
    host_key_pinned: bool


class CopyCwdPlan(Frozen):
    host_repo: str = Field(description="Host repository whose .git is copied in.")
    bottle_path: str
    files: int
    bytes: int


class BottlePlan(Frozen):
    """Everything a careful reviewer needs before a bottle starts."""

    plan_id: str
    digest: str = Field(description="Hash of the plan's content; launch refuses if it changed.")
    backend: str
    agent: str
    bottle: str
    manifest: str
    manifest_sha256: str
    image: str
    image_present: bool
    warnings: list[str]
    approval: str | None = Field(
        None, description="Whether launching this plan needs a person's approval, and how to give it ahead."
    )
    runtime: RuntimePlan
    user: str
    home: str
    workdir: str
    capabilities_dropped: list[str]
    capabilities_added: list[str]
    no_new_privileges: bool
    seccomp: str
    read_only_root: bool
    init: bool
    mounts: list[MountPlan]
    host_mounts: list[str] = Field(description="Host paths mounted into the bottle (none by default).")
    network: NetworkPlan
    resources: ResourcePlan
    environment: dict[str, str] = Field(description="Non-secret variables the manifest sets.")
    credentials: list[CredentialPlan]
    command: list[str] = Field(description="The agent's non-interactive command.")
    prompt: PromptPlan | None
    skills: list[SkillPlan]
    ssh: list[SshPlan]
    git: list[GitPlan]
    copy_cwd: CopyCwdPlan | None
    gates: GatePlan | None = Field(None, description="The gate sidecar of git and ssh entries, if any.")

    @staticmethod
    def content_digest(payload: str) -> str:
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class BottleInfo(Frozen):
    bottle_id: str
    agent: str
    bottle: str
    backend: str
    status: str
    runtime: str
    image: str
    created_at: str
    owner: Liveness = Field(
        description="this-server, other-server (alive), orphaned (its server is gone), kept (its server is gone; "
        "kept for a later server of the same manifest to adopt until kept_until), unknown."
    )
    instance: str
    kept_until: str | None = Field(None, description="When a kept bottle removes itself (UTC), if it is kept.")
    note: str | None = Field(None, description="Why this server does not drive it (for example a changed manifest).")


class LaunchResult(Frozen):
    bottle_id: str
    status: str
    runtime: str
    agent: str
    image: str
    workdir: str
    duration_ms: int
    provisioned: list[str] = Field(description="What was copied in at launch.")


class ExecResult(Frozen):
    """Status first, output last: a host that shows only the start of a long result still shows the facts."""

    exit_code: int | None = Field(description="The command's exit status; null when it was killed on timeout.")
    timed_out: bool
    truncated: bool = Field(
        description="True when stdout or stderr went over the cap: the middle was cut (head and tail kept) and "
        "the whole stream is in stdout_path / stderr_path in the bottle."
    )
    stdout_bytes: int = Field(description="Bytes the command wrote to stdout in all.")
    stderr_bytes: int
    output_cap_bytes: int
    duration_ms: int
    stdout_path: str | None = Field(
        None, description="File in the bottle holding the whole stdout (read it with exec or cp_out)."
    )
    stderr_path: str | None = Field(None, description="File in the bottle holding the whole stderr.")
    job: JobInfo | None = Field(None, description="With background=true: the job; follow it with wait_job.")
    notes: list[str] = Field(default_factory=list, description="How the output was cut or made safe, if it was.")
    stdout: str
    stderr: str

    @classmethod
    def started_in_background(cls, job: JobInfo) -> ExecResult:
        return cls(
            exit_code=None,
            stdout="",
            stderr="",
            truncated=False,
            stdout_bytes=0,
            stderr_bytes=0,
            output_cap_bytes=0,
            timed_out=False,
            duration_ms=0,
            notes=[f"started in the background as job {job.job_id}; call wait_job to follow it"],
            job=job,
        )


class CopyResult(Frozen):
    bottle_id: str
    host_path: str
    bottle_path: str
    files: int
    directories: int
    symlinks: int
    bytes: int
    duration_ms: int


class StopResult(Frozen):
    bottle_id: str
    removed: list[str]


ResourceKind = Literal["container", "volume", "network"]


class CleanupItem(Frozen):
    kind: ResourceKind
    id: str
    name: str
    bottle_id: str
    owner: Liveness
    instance: str


class CleanupPlan(Frozen):
    remove: list[CleanupItem] = Field(description="Resources whose server is gone.")
    keep: list[CleanupItem] = Field(description="Resources of live servers, or of unknown hosts; left alone.")

    @property
    def empty(self) -> bool:
        return not self.remove


class CleanupFailure(Frozen):
    item: CleanupItem
    error: str


class CleanupReport(Frozen):
    dry_run: bool
    summary: str = Field("", description="How many items were removed, kept and failed (the lists may be cut).")
    removed: list[CleanupItem]
    kept: list[CleanupItem]
    failed: list[CleanupFailure]
