"""The TOML manifest a human writes: what bottles exist and what each agent may do.

Loading validates everything that can be checked without an engine: shapes,
names, cross references, and that every file the manifest names exists.
Every problem is reported with the file, the TOML path and a fix.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ManifestError

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"
SKILL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
GIT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SSH_ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
EGRESS_PATTERN = r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+(:[0-9]{1,5})?$"
EGRESS_HOST_PATTERN = r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
USER_PATTERN = r"^[0-9]{1,10}(:[0-9]{1,10})?$"
ABS_PATH_PATTERN = r"^/[A-Za-z0-9._/-]*$"

# When a person must approve a launch (see bottle_mcp/approval.py and docs/approval.md).
ApprovePolicy = Literal["never", "always", "elevated"]

MIN_MEMORY = 6 * 1024**2  # Docker refuses less

# Variables the server sets itself inside every bottle.
RESERVED_ENV = frozenset({"HOME", "USER", "PATH", "BOTTLE_ID", "BOTTLE_AGENT"})

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str | int) -> int:
    """`"512m"`, `"1.5g"`, `"1GiB"` or a byte count -> bytes."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"size must be positive, got {value}")
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size; write it like '512m', '2g' or a number of bytes")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if size < 1:
        raise ValueError(f"size {value!r} is zero, which engines read as 'no limit'; give a positive size")
    return size


_DURATION_RE = re.compile(r"^\s*([0-9]+)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_KEEP_S = 7 * 86400


def parse_duration(value: str | int) -> int:
    """`"20s"`, `"90m"`, `"1h"`, `"2d"`, `"0"` or a number of seconds -> seconds."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return value
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; write it like '20s', '30m', '1h', '2d' or '0'")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


_FORMAT_UNITS = (("g", "GiB", 1024**3), ("m", "MiB", 1024**2), ("k", "KiB", 1024))


def format_size(n: int, *, approx: bool = False) -> str:
    """A size as the manifest writes it ('512m', exact), or, with `approx`, for reading ('1.5 MiB')."""
    for unit, long_unit, factor in _FORMAT_UNITS:
        if approx and n >= factor:
            return f"{n / factor:.1f} {long_unit}"
        if not approx and n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} B" if approx else str(n)


Size = Annotated[str | int, Field(description="A size such as '512m', '2g' or a number of bytes.")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


UNLIMITED = "unlimited"
MIN_DISK = 16 * 1024**2


class Resources(_Strict):
    """Limits the engine enforces on the bottle."""

    cpus: float = Field(1.0, gt=0, le=256, description="CPU quota in cores.")
    memory: Size = Field("1g", description="Memory limit (no swap beyond it).")
    pids: int = Field(256, ge=16, le=65536, description="Most processes and threads at once.")
    tmp_size: Size = Field("256m", description="Size of the tmpfs at /tmp.")
    home_size: Size = Field("256m", description="Size of the tmpfs holding the user's home directory.")
    disk: Size = Field(
        "10g",
        description=(
            "Hard limit on what the bottle can write to the host's disk (its workspace), enforced by the kernel; "
            "'unlimited' for none (required where the engine cannot enforce a limit)."
        ),
    )

    @field_validator("memory", "tmp_size", "home_size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        parse_size(v)
        return v

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str | int) -> str | int:
        if v == UNLIMITED:
            return v
        try:
            size = parse_size(v)
        except ValueError as e:
            raise ValueError(f"{e}, or 'unlimited'") from None
        if size < MIN_DISK:
            raise ValueError(f"disk {v!r} is below the smallest workspace file system of 16m; give at least '64m'")
        return v

    @property
    def disk_bytes(self) -> int | None:
        """The disk limit in bytes; None when unlimited."""
        return None if self.disk == UNLIMITED else parse_size(self.disk)

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, v: str | int) -> str | int:
        if parse_size(v) < MIN_MEMORY:
            raise ValueError(f"memory {v!r} is below the engine's minimum of 6m; give at least '64m'")
        return v

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)


class Build(_Strict):
    """Build the bottle's image from a folder with a Dockerfile."""

    context: str = Field(description="Build folder, relative to the manifest file.")
    dockerfile: str = Field("Dockerfile", description="Dockerfile path inside the context.")
    args: dict[str, str] = Field(default_factory=dict, description="Build arguments.")


def _egress_port(entry: str) -> str:
    _, _, port = entry.partition(":")
    if port and not 1 <= int(port) <= 65535:
        raise ValueError(f"{entry!r} has port {port}; ports run from 1 to 65535")
    return entry


_PRIVATE_RULE = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+(?:/\d{1,3})?)\]|(?P<v4>[0-9.]+(?:/\d{1,2})?))(?::(?P<port>\d{1,5}))?$"
)


def _private_rule(entry: str) -> str:
    """'10.20.0.0/16:443', '10.0.0.5', '[fd00::/8]:443' (the proxy parses the same form: egress_addrs.py)."""
    m = _PRIVATE_RULE.match(entry)
    how = "write a CIDR with an optional port, e.g. '10.20.0.0/16', '10.20.0.0/16:443' or '[fd00::/8]:443'"
    if m is None:
        raise ValueError(f"{entry!r}: {how} (IPv6 in brackets)")
    try:
        ipaddress.ip_network(m.group("v6") or m.group("v4"), strict=False)
    except ValueError as e:
        raise ValueError(f"{entry!r}: {e}; {how}") from None
    port = m.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{entry!r} has port {port}; ports run from 1 to 65535")
    return entry


class CredentialRoute(_Strict):
    """Where the egress proxy puts a credential's real value in place of the bottle's stand-in."""

    hosts: list[Annotated[str, Field(pattern=EGRESS_HOST_PATTERN)]] = Field(
        min_length=1,
        description="Hosts (or '*.' wildcards) whose requests get the real value; any other host that is sent "
        "the stand-in is refused.",
    )
    body: bool = Field(
        False,
        description="Also replace the stand-in in request bodies to these hosts (off by default: a host that "
        "stores what it is sent and lets the bottle read it back would hand the bottle the real value).",
    )


class Egress(_Strict):
    """Hosts the bottle may reach through the egress proxy (see docs/security.md)."""

    allow: list[Annotated[str, Field(pattern=EGRESS_PATTERN), AfterValidator(_egress_port)]] = Field(
        default_factory=list,
        description="Lower-case host names, optionally '*.' wildcards and ':port' (default ports 443 and 80).",
    )
    passthrough: list[Annotated[str, Field(pattern=EGRESS_HOST_PATTERN)]] = Field(
        default_factory=list,
        description="Allowed hosts whose TLS is passed through, not intercepted (e.g. certificate pinning); "
        "requests to them are not scanned for credentials.",
    )
    credentials: dict[
        Annotated[str, Field(pattern=ENV_NAME_PATTERN)],
        list[Annotated[str, Field(pattern=EGRESS_HOST_PATTERN)]] | CredentialRoute,
    ] = Field(
        default_factory=dict,
        description="Per credential, the hosts the proxy adds its real value for: a list of hosts (the value "
        "goes into request headers), or a table `{ hosts = [...], body = true }` (headers and bodies). The "
        "bottle holds a stand-in; a request carrying it to any other host is refused.",
    )
    upstream_ca: str | None = Field(
        None, description="PEM file of an extra CA the proxy trusts for upstream TLS (relative to the manifest)."
    )
    allow_private: list[Annotated[str, AfterValidator(_private_rule)]] = Field(
        default_factory=list,
        description="Non-public destinations the proxy may connect to (by default it refuses loopback, private, "
        "link-local, CGNAT, multicast, reserved ranges and every address of the host and the engine's networks): "
        "CIDRs, each optionally with ':port', IPv6 in brackets, e.g. ['10.20.0.0/16:443', '[fd00::/8]']. "
        "Names must still be in allow; each entry shows in the plan as an elevation.",
    )

    def route(self, name: str) -> CredentialRoute | None:
        """Where the real value of credential `name` goes, or None when the manifest names no hosts for it."""
        entry = self.credentials.get(name)
        if entry is None:
            return None
        return entry if isinstance(entry, CredentialRoute) else CredentialRoute(hosts=list(entry))


class SshEntry(_Strict):
    """An SSH host the bottle may reach."""

    host: str = Field(pattern=SSH_ALIAS_PATTERN, description="Alias the bottle uses (`ssh ALIAS`).")
    hostname: str = Field(pattern=HOSTNAME_PATTERN, description="Real host name or address.")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field("git", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
    identity_file: str = Field(
        description="Private key on the host, relative to the manifest or ~-based, without a passphrase; an "
        "ssh-agent in the gate holds it, the bottle never does."
    )
    known_host_key: str | None = Field(
        None, description="Pinned host key line, e.g. 'ssh-ed25519 AAAA...'; without it the bottle trusts on first use."
    )


class GitEntry(_Strict):
    """A git upstream the bottle's agent may push to through the git gate."""

    name: str = Field(pattern=GIT_NAME_PATTERN, description="Remote name inside the bottle.")
    upstream: str = Field(description="ssh:// URL of the upstream repository.")
    identity_file: str = Field(description="Private key the gate uses to push; never enters the bottle.")
    known_host_key: str | None = Field(
        None,
        description="Pinned host key line for the upstream, e.g. 'ssh-ed25519 AAAA...'; without it the gate trusts "
        "the key it sees at launch.",
    )

    @field_validator("upstream")
    @classmethod
    def _ssh_url(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{v!r} has an invalid port; use a number from 1 to 65535, or leave it out for 22")
        if parts.scheme != "ssh" or not parts.hostname or not parts.path.strip("/"):
            raise ValueError(f"{v!r} is not an ssh:// URL; write it like 'ssh://git@host:22/owner/repo.git'")
        if v.startswith("-") or any(c in v for c in " \t\n'\"`$;"):
            raise ValueError(f"{v!r} contains characters that are not allowed in an upstream URL")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.upstream)
        return (parts.hostname or "").lower(), parts.port or 22


class BottleDef(_Strict):
    """An isolated environment: image, runtime, limits, network and upstreams."""

    image: str | None = Field(None, description="Image reference on the engine.")
    build: Build | None = Field(None, description="Build the image from a local folder instead.")
    runtime: Literal["auto", "runc", "runsc"] = Field(
        "auto", description="'auto' uses gVisor (runsc) when the engine has it, else runc."
    )
    network: Literal["none", "egress"] = Field(
        "none", description="'none': no network at all. 'egress': only the hosts in [egress] allow."
    )
    egress: Egress | None = None
    env: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    user: str = Field("1000:1000", pattern=USER_PATTERN, description="uid[:gid]; root is refused.")
    home: str = Field("/home/bottle", pattern=ABS_PATH_PATTERN, description="The user's home directory.")
    workdir: str = Field(
        "/workspace",
        pattern=ABS_PATH_PATTERN,
        description="Writable workspace (a volume owned by the bottle).",
    )
    read_only_root: bool = Field(True, description="Opt-out of the read-only root file system.")
    warm_pool: int = Field(
        0,
        ge=0,
        le=64,
        description="Started spare containers kept ready for this bottle, so launches skip create and start.",
    )
    ssh: list[SshEntry] = Field(default_factory=list)
    git: list[GitEntry] = Field(default_factory=list)
    real_credentials: list[Annotated[str, Field(pattern=ENV_NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Credentials that enter this bottle with their real value instead of a stand-in: only for "
        "a value the bottle must use itself (or send to a passthrough host, where the proxy cannot substitute). "
        "Any process in the bottle can then read it and send it out; the plan shows each as an elevation.",
    )

    @field_validator("user")
    @classmethod
    def _not_root(cls, v: str) -> str:
        if int(v.split(":", maxsplit=1)[0]) == 0:
            raise ValueError("bottles never run as root; use a non-zero uid such as '1000:1000'")
        return v

    @field_validator("env")
    @classmethod
    def _no_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(set(v) & RESERVED_ENV)
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by the server; remove them from env")
        return v

    def key_files(self) -> list[tuple[str, int, str]]:
        """(kind, index, identity_file) of every SSH and git entry."""
        return [("ssh", i, s.identity_file) for i, s in enumerate(self.ssh)] + [
            ("git", i, g.identity_file) for i, g in enumerate(self.git)
        ]

    @model_validator(mode="after")
    def _image_or_build(self) -> BottleDef:
        if self.image is None and self.build is None:
            raise ValueError("set either image = 'name:tag' or a [build] table with a context folder")
        return self


class AgentDef(_Strict):
    """An agent: which bottle it runs in and how it is started."""

    bottle: str = Field(pattern=NAME_PATTERN, description="Name of a [bottles.NAME] table.")
    description: str = ""
    command: list[str] = Field(
        min_length=1,
        description="argv that runs the agent non-interactively (no shell involved). Placeholders: "
        "{prompt_file} (a file holding the task prompt), {prompt} (the task prompt as an argument), "
        "{system_prompt_file} (the provisioned prompt). Without {prompt} or {prompt_file} the task "
        "prompt comes on stdin; a `claude` command gets --append-system-prompt-file automatically.",
    )
    prompt: str | None = Field(None, description="System prompt, inline.")
    prompt_file: str | None = Field(None, description="System prompt from a file, relative to the manifest.")
    skills: list[Annotated[str, Field(pattern=SKILL_PATTERN)]] = Field(
        default_factory=list, description="Folders under the host's skills directory."
    )
    credentials: list[Annotated[str, Field(pattern=ENV_NAME_PATTERN)]] = Field(
        default_factory=list, description="Host environment variables passed into the bottle (names only)."
    )

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, v: list[str]) -> list[str]:
        from .agents import PLACEHOLDERS, unknown_placeholders

        for element in v:
            unknown = unknown_placeholders(element)
            if unknown:
                raise ValueError(
                    f"unknown placeholder {unknown[0]} in {element!r}; the known ones are {', '.join(PLACEHOLDERS)}"
                )
        return v

    @model_validator(mode="after")
    def _one_prompt(self) -> AgentDef:
        if self.prompt is not None and self.prompt_file is not None:
            raise ValueError("set prompt or prompt_file, not both")
        if self.prompt is None and self.prompt_file is None and any("{system_prompt_file}" in c for c in self.command):
            raise ValueError("the command uses {system_prompt_file} but the agent has no prompt or prompt_file")
        return self


class RootDef(_Strict):
    """A host folder the server may copy from and into, with what a copy out may keep."""

    path: str = Field(description="The folder, relative to the manifest.")
    keep_exec: bool = Field(
        False,
        description="Keep the executable bits of files cp_out writes here (dropped by default, so that nothing "
        "a bottle wrote runs by a double click or a PATH lookup).",
    )


class HostSettings(_Strict):
    """What the server may touch on the host."""

    roots: list[str | RootDef] = Field(
        default_factory=list,
        description="Folders cp_in may read from and cp_out may write into (relative to the manifest): a path, or "
        "a table {path = ..., keep_exec = true}. Empty: the server's start folder.",
    )
    skills_dir: str = Field("~/.claude/skills", description="Where skills live on the host.")
    output_cap: Size = Field(
        "16k",
        description="Bytes of stdout (and of stderr) one exec, wait_job or diff returns by default; more is cut in "
        "the middle (head and tail kept) and kept whole in the bottle. The default fits what agent hosts pass "
        "to the model whole.",
    )
    output_cap_max: Size = Field(
        "1m", description="The most a call may ask for with its own output_cap argument (at most 64m)."
    )
    max_bottles: int = Field(64, ge=1, le=1000, description="Most live bottles per server.")
    approve: ApprovePolicy = Field(
        "elevated",
        description="When a person must approve a launch through the MCP client: 'never', 'always', or "
        "'elevated' (only bottles that grant more than the offline default). `serve --approve` overrides it.",
    )
    keep_for: str | int = Field(
        "1h",
        description="How long the bottles and their running jobs are kept when the client goes away (stdin closes, "
        "or the host stops the server with signals), for a later server of the same manifest to adopt; then they "
        "remove themselves. A duration such as '20s', '30m', '1h' (at most '7d'); '0' removes them at once.",
    )
    on_exit: Literal["keep", "remove"] = Field(
        "keep",
        description="What `serve` does with its bottles when the client goes away: 'keep' them for keep_for, or "
        "'remove' them. `serve --on-exit` overrides it.",
    )
    approved_agents: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Agents whose launches the person approves ahead, here: they launch without a question "
        "through the client (for hosts that cannot ask, such as `claude -p`). Each launch is still recorded.",
    )

    @field_validator("output_cap", "output_cap_max")
    @classmethod
    def _cap(cls, v: str | int) -> str | int:
        if parse_size(v) > 64 * 1024**2:
            raise ValueError("output caps are at most 64m")
        if parse_size(v) < 1024:
            raise ValueError("output caps are at least 1k")
        return v

    @field_validator("keep_for")
    @classmethod
    def _keep_for(cls, v: str | int) -> str | int:
        if parse_duration(v) > MAX_KEEP_S:
            raise ValueError("keep_for is at most '7d'")
        return v


class Manifest(_Strict):
    """Top level of a bottle-mcp manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="bottle-mcp manifest")

    version: Literal[1] = 1
    host: HostSettings = Field(default_factory=HostSettings)
    bottles: dict[Annotated[str, Field(pattern=NAME_PATTERN)], BottleDef] = Field(min_length=1)
    agents: dict[Annotated[str, Field(pattern=NAME_PATTERN)], AgentDef] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest together with where it came from."""

    manifest: Manifest
    path: Path
    sha256: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, value: str) -> Path:
        """A path written in the manifest: `~` expands, relative means relative to the manifest."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base_dir / p)

    def image_for(self, bottle_name: str) -> str:
        bottle = self.manifest.bottles[bottle_name]
        return bottle.image or f"bottle-mcp/{bottle_name}:latest"

    def host_roots(self, default: Path) -> list[Path]:
        roots = [self.resolve(r if isinstance(r, str) else r.path) for r in self.manifest.host.roots] or [default]
        return [r.resolve() for r in roots]

    def keeps_exec(self, root: Path) -> bool:
        """Whether the manifest keeps executable bits of files copied out into `root`."""
        return any(
            isinstance(r, RootDef) and r.keep_exec and self.resolve(r.path).resolve() == root
            for r in self.manifest.host.roots
        )

    def skills_dir(self) -> Path:
        return self.resolve(self.manifest.host.skills_dir)


def toml_path(loc: tuple[int | str, ...]) -> str:
    """('agents', 'worker', 'skills', 1) -> 'agents.worker.skills[1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += f".{key}" if out else key
    return out or "(top level)"


_PATTERN_HELP = {
    NAME_PATTERN: "a lower-case name: a letter, then letters, digits or '-' (at most 31 characters)",
    # skill folders, git remote names and ssh aliases share one pattern
    SKILL_PATTERN: "a plain name: letters, digits, '.', '_' or '-' (no slashes, at most 64 characters)",
    ENV_NAME_PATTERN: "an environment variable name such as ANTHROPIC_API_KEY",
    HOSTNAME_PATTERN: "a host name or address",
    EGRESS_PATTERN: "a lower-case host name, optionally with a '*.' prefix and a ':port' suffix",
    USER_PATTERN: "a numeric 'uid' or 'uid:gid'",
    ABS_PATH_PATTERN: "an absolute path of plain characters, e.g. /workspace",
}


def _field_homes(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Where each key name is valid: {'memory': ['bottles.NAME.resources'], ...}."""
    homes: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        homes.setdefault(name, []).append(prefix or "(top level)")
        ann = info.annotation
        for sub in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(sub, "__args__", ())
            for cand in (sub, *inner):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    step = f"{prefix}.{name}" if prefix else name
                    if name in {"bottles", "agents"}:
                        step += ".NAME"
                    for k, v in _field_homes(cand, step).items():
                        homes.setdefault(k, []).extend(v)
    return homes


def _describe(err: Any) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    loc = tuple(p for p in loc if p != "[key]")
    msg = str(err["msg"]).removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        homes = sorted(set(_field_homes(Manifest).get(key, [])))
        if homes:
            msg = f"{key!r} is not allowed here; it belongs in [{'] or ['.join(homes)}]"
        else:
            msg = f"unknown key {key!r}; check its spelling (docs/manifest.md lists every key)"
    elif kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern", "")
        msg = f"{err['input']!r} is not {_PATTERN_HELP.get(pattern, 'valid: it must match ' + pattern)}"
    elif kind == "missing":
        msg = "this key is required; add it"
    elif kind == "literal_error":
        msg = f"{err['input']!r} is not allowed: {msg[0].lower()}{msg[1:]}"
    elif kind != "value_error":
        msg = f"{msg} (got {err.get('input')!r}; docs/manifest.md shows the expected form)"
    return toml_path(loc), msg


def _cross_check(lm: LoadedManifest) -> list[tuple[str, str]]:
    """Checks that span tables or touch the host's files."""
    m = lm.manifest
    problems: list[tuple[str, str]] = []
    for name, agent in m.agents.items():
        if agent.bottle not in m.bottles:
            known = ", ".join(sorted(m.bottles))
            problems.append((f"agents.{name}.bottle", f"no bottle named {agent.bottle!r}; known bottles: {known}"))
        if agent.prompt_file is not None and not lm.resolve(agent.prompt_file).is_file():
            problems.append(
                (
                    f"agents.{name}.prompt_file",
                    f"file {str(lm.resolve(agent.prompt_file))!r} does not exist; create it or fix the path "
                    "(relative paths start at the manifest's folder)",
                )
            )
    for name, bottle in m.bottles.items():
        where = f"bottles.{name}"
        problems += _check_egress(lm, where, bottle)
        problems += _check_credentials(m, name, bottle)
        problems += _check_upstreams(lm, where, bottle)
    return problems


def _check_credentials(m: Manifest, name: str, bottle: BottleDef) -> list[tuple[str, str]]:
    """Credential hosts must be reachable; real_credentials must name credentials this bottle's agents get."""
    where = f"bottles.{name}"
    problems: list[tuple[str, str]] = []
    if bottle.egress is not None:
        allowed = {a.split(":")[0] for a in bottle.egress.allow}
        for cred in bottle.egress.credentials:
            route = bottle.egress.route(cred)
            assert route is not None
            for j, h in enumerate(route.hosts):
                if not any(_host_covered(h, a) for a in allowed):
                    problems.append(
                        (
                            f"{where}.egress.credentials.{cred}[{j}]",
                            f"{h!r} is not in egress.allow, so the credential could never reach it; add it there",
                        )
                    )
    forwarded = {c for a in m.agents.values() if a.bottle == name for c in a.credentials}
    for i, cred in enumerate(bottle.real_credentials):
        if cred not in forwarded:
            problems.append(
                (
                    f"{where}.real_credentials[{i}]",
                    f"{cred!r} is not among the credentials of any agent of this bottle; add it to an agent's "
                    "credentials or remove it here",
                )
            )
    return problems


def _check_egress(lm: LoadedManifest, where: str, bottle: BottleDef) -> list[tuple[str, str]]:
    """A bottle's network, egress and build settings against each other and the host's files."""
    problems: list[tuple[str, str]] = []
    if bottle.network == "egress" and not (bottle.egress and bottle.egress.allow):
        problems.append((f"{where}.egress.allow", "network = 'egress' needs at least one allowed host"))
    if bottle.network == "none" and bottle.egress and bottle.egress.allow:
        problems.append(
            (
                f"{where}.network",
                "an egress allow-list is declared but network = 'none'; set network = 'egress'",
            )
        )
    if bottle.egress is not None:
        hosts = {a.split(":")[0] for a in bottle.egress.allow}
        for i, p in enumerate(bottle.egress.passthrough):
            if not any(p == h or (h.startswith("*.") and p.endswith(h[1:])) for h in hosts):
                problems.append((f"{where}.egress.passthrough[{i}]", f"{p!r} is not in egress.allow; add it there"))
        ca = bottle.egress.upstream_ca
        if ca is not None and not lm.resolve(ca).is_file():
            problems.append((f"{where}.egress.upstream_ca", f"file {str(lm.resolve(ca))!r} does not exist"))
    if bottle.build is not None:
        ctx = lm.resolve(bottle.build.context)
        if not (ctx / bottle.build.dockerfile).is_file():
            problems.append(
                (
                    f"{where}.build.context",
                    f"no {bottle.build.dockerfile} in {str(ctx)!r}; fix the folder",
                )
            )
    return problems


def _check_upstreams(lm: LoadedManifest, where: str, bottle: BottleDef) -> list[tuple[str, str]]:
    """A bottle's git and ssh upstreams: unique names, no git upstream reachable around the gate, key files."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, g in enumerate(bottle.git):
        if g.name in seen:
            problems.append(
                (
                    f"{where}.git[{i}].name",
                    f"{g.name!r} is already used by git[{seen[g.name]}]; names are unique",
                )
            )
        seen.setdefault(g.name, i)
    ssh_targets = {(s.hostname.lower(), s.port): i for i, s in enumerate(bottle.ssh)}
    for i, g in enumerate(bottle.git):
        if g.host_port in ssh_targets:
            host, port = g.host_port
            problems.append(
                (
                    f"{where}.git[{i}].upstream",
                    f"{host}:{port} is also reachable through ssh[{ssh_targets[g.host_port]}]; an agent could "
                    "bypass the git gate's checks that way. Remove one of the two entries",
                )
            )
    for kind, i, identity_file in bottle.key_files():
        key = lm.resolve(identity_file)
        if not key.is_file():
            problems.append(
                (f"{where}.{kind}[{i}].identity_file", f"key file {str(key)!r} does not exist; fix the path")
            )
    return problems


def _host_covered(host: str, allowed: str) -> bool:
    """Whether an allow entry's host part (`host` or `*.domain`) covers `host` (itself maybe a wildcard)."""
    if host == allowed:
        return True
    return allowed.startswith("*.") and host.endswith(allowed[1:]) and len(host) > len(allowed) - 1


def _fail(path: Path, problems: list[tuple[str, str]]) -> ManifestError:
    lines = [f"{path}: {where}: {msg}" for where, msg in problems]
    head = f"manifest {str(path)!r} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
    return ManifestError("\n".join([head, *(f"  - {line}" for line in lines)]))


def parse_manifest(data: bytes, path: Path) -> LoadedManifest:
    """Validate manifest bytes that came from `path` (used for messages and relative paths)."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {str(path)!r} is not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"manifest {str(path)!r} is not valid TOML: {e}. Fix the syntax there.") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise _fail(path, [_describe(err) for err in e.errors()]) from None
    lm = LoadedManifest(manifest=manifest, path=path, sha256=hashlib.sha256(data).hexdigest())
    problems = _cross_check(lm)
    if problems:
        raise _fail(path, problems)
    return lm


def load_manifest(path: str | Path) -> LoadedManifest:
    p = Path(path).expanduser().absolute()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"manifest {str(p)!r} does not exist; pass --manifest PATH (see manifests/example.toml)"
        ) from None
    except OSError as e:
        raise ManifestError(f"manifest {str(p)!r} cannot be read: {e.strerror}") from None
    return parse_manifest(data, p)


def manifest_json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def dump_manifest(manifest: Manifest) -> str:
    """Serialize a manifest back to TOML (defaults left out)."""
    return tomli_w.dumps(manifest.model_dump(mode="json", exclude_none=True, exclude_defaults=True))
