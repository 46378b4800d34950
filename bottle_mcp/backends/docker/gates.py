"""Git and SSH gates for a Docker bottle: a sidecar that holds the keys, and a forwarder beside the bottle.

The topology (docs/gates.md says why this one):

    bottle        network "none" (or the egress topology): no route to any upstream
      forwarder   a container in the bottle's network namespace: 127.0.0.1:9418 (git),
                  127.0.0.1:2200+i (ssh entry i) and 127.0.0.1:2300+i (its ssh agent)
                  -> Unix sockets on a volume shared only with the gate
    gate          git daemon over bare repositories (one per git entry) whose
                  pre-receive hook scans every new commit and forwards accepted pushes
                  upstream with the entry's key; an L4 relay per ssh entry to exactly
                  its host:port; an ssh-agent per ssh entry holding its key. The gate
                  sits on its own bridge network (or the one the server was told to use)
                  and is the only one of them with a route to the upstreams.

Keys reach the gate through an exec's stdin into its tmpfs at launch: never an
environment variable, an image layer, a volume or the bottle.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import docker

from ... import labels as L
from ...auditlog import clip_fields
from ...errors import EngineError, EngineNotFoundError, ImageMissingError, LaunchError, PlanError
from ...manifest import BottleDef, LoadedManifest
from ...models import GateEvent, GatePlan, GateRecords
from . import disk
from .engine import Engine
from .execstream import ExecStream
from .images import builtin_tag
from .mould import Mould, forwarder

GATE_IMAGE = builtin_tag("git-gate")
GATE_USER = "10102:10102"
GIT_PORT = 9418
SSH_PORT_BASE = 2200
AGENT_PORT_BASE = 2300
MAX_SSH_ENTRIES = 99
READY_TIMEOUT_S = 30.0
CONFIGURE_TIMEOUT_S = 180.0
EVENTS_CAP = 16 * 1024**2
MAX_EVENT_LINE = 65536  # longer is not a line the gate wrote (it clips its fields)
# The server's own setting (never the manifest's): a Docker network the gates join instead of
# a bridge of their own, for upstreams that are themselves containers on that network.
GATE_NETWORK_ENV = "BOTTLE_MCP_GATE_NETWORK"
HOST_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}$"
)
SCANNER = (
    "detect-secrets 1.5.0 plugins (allowlist comments ignored) plus the gate's rules for Anthropic, OpenAI, "
    "GitHub, Google and Hugging Face tokens, private keys and this agent's forwarded credentials; every object "
    "a push carries (blobs, tree entry names, commit and tag headers and messages) and every pushed ref name "
    "is scanned"
)


def needed(bottle: BottleDef) -> bool:
    return bool(bottle.git or bottle.ssh)


def bottle_url(name: str) -> str:
    return f"git://127.0.0.1:{GIT_PORT}/{name}.git"


def _host_key(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    parts = value.split(" ")
    key = " ".join(parts[:2])
    # At most a comment after the key, and never a second line.
    if len(parts) > 3 or any(c in value for c in "\r\n\t") or not HOST_KEY_RE.fullmatch(key):
        raise PlanError(
            f"{where}.known_host_key: {value[:60]!r} is not a host key line; write it like 'ssh-ed25519 AAAA...' "
            "(the output of `ssh-keyscan HOST`, without the host name)"
        )
    return key


def _check_key(path: Path, where: str) -> None:
    """The gate runs unattended: a key behind a passphrase cannot be used there."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise PlanError(f"{where}.identity_file: {str(path)!r} cannot be read: {e.strerror}") from None
    if "PRIVATE KEY-----" not in text:
        raise PlanError(f"{where}.identity_file: {str(path)!r} is not a private key file (PEM or OpenSSH format)")
    encrypted = "ENCRYPTED" in text
    if "BEGIN OPENSSH PRIVATE KEY" in text:
        body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
        with contextlib.suppress(ValueError):
            encrypted = b"bcrypt" in base64.b64decode(body)[:64]
    if encrypted:
        raise PlanError(
            f"{where}.identity_file: {str(path)!r} is protected by a passphrase, which the gate cannot type; "
            "use a key without one (a deploy key limited to this repository or host)"
        )


def validate(lm: LoadedManifest, bottle: BottleDef, bottle_name: str) -> None:
    where = f"bottles.{bottle_name}"
    for i, g in enumerate(bottle.git):
        _host_key(g.known_host_key, f"{where}.git[{i}]")
        _check_key(lm.resolve(g.identity_file), f"{where}.git[{i}]")
    for i, s in enumerate(bottle.ssh):
        _host_key(s.known_host_key, f"{where}.ssh[{i}]")
        _check_key(lm.resolve(s.identity_file), f"{where}.ssh[{i}]")
    if len(bottle.ssh) > MAX_SSH_ENTRIES:
        raise PlanError(f"{where}.ssh: at most {MAX_SSH_ENTRIES} ssh entries per bottle")


def gate_plan(bottle: BottleDef) -> GatePlan | None:
    if not needed(bottle):
        return None
    return GatePlan(
        image=GATE_IMAGE,
        git_remotes={g.name: bottle_url(g.name) for g in bottle.git},
        ssh_hosts={s.host: f"127.0.0.1:{SSH_PORT_BASE + i} -> {s.hostname}:{s.port}" for i, s in enumerate(bottle.ssh)},
        keys=(
            "git keys are held by the gate, which pushes upstream itself; ssh keys are held by an ssh-agent in the "
            "gate that signs only logins, as the declared user, to the declared host (a destination-constrained "
            "key). No key file enters the bottle"
        ),
        scanner=SCANNER,
    )


def plan_warnings(bottle: BottleDef) -> list[str]:
    warnings = [
        f"git remote {g.name!r} has no known_host_key: the gate trusts the upstream's host key on first use at "
        "launch (and records its fingerprint in gate_log); pin it with known_host_key to be safe from the start"
        for g in bottle.git
        if g.known_host_key is None
    ]
    warnings += [
        f"ssh host {s.host!r} has no known_host_key: the bottle's ssh client trusts the host key on first use"
        for s in bottle.ssh
        if s.known_host_key is None
    ]
    return warnings


def _known_hosts(hostname: str, port: int, key: str | None) -> list[str]:
    if key is None:
        return []
    pattern = hostname if port == 22 else f"[{hostname}]:{port}"
    return [f"{pattern} {key}"]


def gate_config(lm: LoadedManifest, bottle: BottleDef, credentials: list[str]) -> dict[str, Any]:
    """What `gate.py configure` reads on its stdin. Holds the keys: never log or store it."""
    creds = []
    for name in credentials:
        value = os.environ.get(name)
        if value is None or len(value) < 12:
            continue
        creds.append(
            {
                "name": name,
                "prefix": value[:6],
                "length": len(value),
                "sha256": hashlib.sha256(value.encode()).hexdigest(),
            }
        )
    return {
        "git": [
            {
                "index": i,
                "name": g.name,
                "upstream": g.upstream,
                "key": lm.resolve(g.identity_file).read_text(),
                "known_hosts": _known_hosts(*g.host_port, _host_key(g.known_host_key, "git")),
            }
            for i, g in enumerate(bottle.git)
        ],
        "ssh": [
            {
                "index": i,
                "hostname": s.hostname,
                "port": s.port,
                "user": s.user,
                "host_keys": [k] if (k := _host_key(s.known_host_key, "ssh")) else [],
                "key": lm.resolve(s.identity_file).read_text(),
            }
            for i, s in enumerate(bottle.ssh)
        ],
        "credentials": creds,
    }


def forward_mappings(bottle: BottleDef) -> list[str]:
    maps = [f"{GIT_PORT}:git.sock"] if bottle.git else []
    for i in range(len(bottle.ssh)):
        maps += [f"{SSH_PORT_BASE + i}:ssh-{i}.sock", f"{AGENT_PORT_BASE + i}:agent-{i}.sock"]
    return maps


# -- what the bottle gets ---------------------------------------------------------------------


def bottle_files(bottle: BottleDef) -> dict[str, str]:
    """Files for the bottle's home (relative path -> text): git remotes, ssh config, the agent relay."""
    files: dict[str, str] = {}
    if bottle.git:
        lines = []
        for g in bottle.git:
            url = bottle_url(g.name)
            lines += [
                f'[remote "{g.name}"]',
                f"\turl = {url}",
                f"\tfetch = +refs/heads/*:refs/remotes/{g.name}/*",
                f'[url "{url}"]',
                f"\tinsteadOf = {g.upstream}",
            ]
        files[".gitconfig"] = "# Written by bottle-mcp: these remotes lead to the git gate.\n" + "\n".join(lines) + "\n"
    if bottle.ssh:
        conf = ["# Written by bottle-mcp: each host is reached through the gate, which holds its key."]
        known = []
        for i, s in enumerate(bottle.ssh):
            conf += [
                f"Host {s.host}",
                "\tHostName 127.0.0.1",
                f"\tPort {SSH_PORT_BASE + i}",
                f"\tUser {s.user}",
                f"\tHostKeyAlias {s.host}",
                "\tUserKnownHostsFile ~/.ssh/known_hosts",
                f"\tStrictHostKeyChecking {'yes' if s.known_host_key else 'accept-new'}",
                f"\tIdentityAgent ~/.ssh/agent-{i}.sock",
                "\tIdentityFile none",
                "\tForwardAgent no",
                "\tCheckHostIP no",
            ]
            key = _host_key(s.known_host_key, "ssh")
            if key:
                known.append(f"{s.host} {key}")
        files[".ssh/config"] = "\n".join(conf) + "\n"
        files[".ssh/known_hosts"] = "".join(line + "\n" for line in known)
        files[".bottle-mcp/ssh-agent-relay.py"] = agent_relay()
    return files


def relay_command(bottle: BottleDef) -> str | None:
    """Shell command that starts the agent relay in the bottle, detached, and waits for its sockets."""
    if not bottle.ssh:
        return None
    pairs = " ".join(f"$HOME/.ssh/agent-{i}.sock:{AGENT_PORT_BASE + i}" for i in range(len(bottle.ssh)))
    socks = " ".join(f"$HOME/.ssh/agent-{i}.sock" for i in range(len(bottle.ssh)))
    return (
        "command -v python3 >/dev/null || { echo 'ssh entries need python3 in the bottle image "
        "(for the ssh agent relay)' >&2; exit 3; }; chmod 700 $HOME/.ssh; "
        f"setsid python3 $HOME/.bottle-mcp/ssh-agent-relay.py {pairs} </dev/null >/dev/null 2>&1 & "
        f"for _ in $(seq 1 100); do ok=1; for s in {socks}; do [ -S $s ] || ok=0; done; "
        '[ "$ok" = 1 ] && exit 0; sleep 0.05; done; echo "the ssh agent relay did not start" >&2; exit 1'
    )


def agent_relay() -> str:
    """The ssh-agent relay the bottle runs (bottle_mcp/data/ssh_agent_relay.py)."""
    return (resources.files("bottle_mcp") / "data" / "ssh_agent_relay.py").read_text(encoding="utf-8")


def parse_events(text: str) -> list[GateEvent]:
    """Events from JSON lines, clipped field by field (they name refs and findings the bottle chose)."""
    out = []
    for line in text.splitlines():
        try:
            raw = json.loads(line[:MAX_EVENT_LINE])
            if isinstance(raw, dict):
                out.append(GateEvent.model_validate(clip_fields(raw)))
        except ValueError:
            continue
    return out


def read_logs_command(mark: str) -> list[str]:
    """Print the gate's logs in one exec: its events, the refused pushes, and how many of those were only
    counted, separated by lines `mark` (a fresh nonce, so no text from the bottle can fake a separator)."""
    script = (
        # The gate rotates its log of events once: the older half first, when there is one.
        "cat /run/gate/events.1.jsonl 2>/dev/null; cat /run/gate/events.jsonl; "
        'printf "\\n%s\\n" "$1"; cat /run/gate/refused.jsonl 2>/dev/null; '
        'printf "\\n%s\\n" "$1"; cat /run/gate/refused.dropped 2>/dev/null; true'
    )
    return ["/bin/sh", "-c", script, "gate-logs", mark]


def merge_events(text: str, mark: str) -> GateRecords:
    """The gate's events and its refused pushes, oldest first, and the count of refused pushes not kept."""
    events, _, rest = text.partition(f"\n{mark}\n")
    refused, _, dropped = rest.partition(f"\n{mark}\n")
    merged = sorted(parse_events(events) + parse_events(refused), key=lambda e: e.time)
    count = dropped.strip()
    return GateRecords(events=merged, dropped=int(count) if count.isdigit() else 0)


# -- the sidecar ----------------------------------------------------------------------------------


class GateStack:
    """The gate, its forwarder, socket volume, repository volume and network of one bottle."""

    def __init__(
        self,
        engine: Engine,
        instance: L.Instance,
        name: str,
        extra: dict[str, str],
        bottle_id: str,
        network: str | None = None,
    ) -> None:
        self._engine = engine
        self._instance = instance
        self._extra = extra
        self._bottle_id = bottle_id
        self._shared_network = network
        self.network_name = network or f"{name}-gate"
        self.socket_volume = f"{name}-gate-sock"
        self.repo_volume = f"{name}-gate-repos"
        self._gate_name = f"{name}-gate"
        self._forwarder_name = f"{name}-gate-fwd"
        self.network_id: str | None = None
        self.volumes: list[str] = []
        self.gate_id: str | None = None
        self.forwarder_id: str | None = None
        self.git_remotes: dict[str, str] = {}
        self.ssh_hosts: dict[str, str] = {}
        self._mappings: list[str] = []

    def _labels(self, role: L.Role, what: str) -> dict[str, str]:
        return self._instance.labels(role, **self._extra, **{f"{L.PREFIX}.gate": what})

    async def start(self, lm: LoadedManifest, bottle: BottleDef, credentials: list[str]) -> None:
        """Create the gate, hand it its keys and wait until it mirrors every upstream and serves."""
        try:
            await self._engine.call("inspect gate image", lambda c: c.images.get(GATE_IMAGE).id)
        except EngineNotFoundError:
            raise ImageMissingError(GATE_IMAGE, "build it with `bottle-mcp images` (or run scripts/setup.sh)") from None
        self.git_remotes = {g.name: g.upstream for g in bottle.git}
        self.ssh_hosts = {s.host: f"{s.hostname}:{s.port}" for s in bottle.ssh}
        self._mappings = forward_mappings(bottle)
        config = json.dumps(gate_config(lm, bottle, credentials)).encode()
        helper = await self._limit_repos(bottle)

        def create(c: docker.DockerClient) -> None:
            if self._shared_network is None:
                net = c.api.create_network(
                    self.network_name, driver="bridge", labels=self._labels("network", "network"), enable_ipv6=False
                )
                self.network_id = str(net["Id"])
            for vol in (self.socket_volume, self.repo_volume):
                if vol not in self.volumes:
                    c.api.create_volume(name=vol, labels=self._labels("sidecar", "volume"))
                    self.volumes.append(vol)
            mounts = [
                docker.types.Mount(target="/run/fwd", source=self.socket_volume, type="volume"),
                docker.types.Mount(target="/srv/git", source=self.repo_volume, type="volume"),
            ]
            self.gate_id = Mould(
                image=GATE_IMAGE,
                command=["serve"],
                name=self._gate_name,
                user=GATE_USER,
                labels=self._labels("sidecar", "gate"),
                network_mode=self.network_name,
                mounts=tuple(mounts),
                tmpfs={"/run/gate": "rw,nosuid,nodev,size=16m,uid=10102,gid=10102,mode=0700"},
                pids=256,
                memory=1024**3,
            ).run(c)

        try:
            await self._engine.call("create the git gate", create)
        finally:
            # Once the gate runs, its mount holds the loop device (see disk.py).
            with anyio.CancelScope(shield=True):
                await self._engine.remove_containers([("disk helper", helper)])
        code, _out, err = await self.run_in_gate(
            ["/opt/gate/venv/bin/python", "/opt/gate/gate.py", "configure"], config
        )
        if code != 0:
            raise LaunchError(f"the git gate could not start: {err.strip()[-1200:] or f'exit status {code}'}")

    async def _limit_repos(self, bottle: BottleDef) -> str | None:
        """Make the repository volume a file system of the bottle's disk limit: what the bottle pushes lands
        there. Returns the disk helper's id (remove it once the gate has started), None without a limit."""
        size = bottle.resources.disk_bytes
        if size is None:
            return None
        uid, _, gid = GATE_USER.partition(":")
        labels = self._labels("sidecar", "volume")
        helper = await disk.create_workspace(
            self._engine,
            name=self._gate_name,
            work_volume=self.repo_volume,
            size=size,
            uid=uid,
            gid=gid,
            volume_labels=labels,
            helper_labels=self._labels("sidecar", "disk-helper"),
        )
        # Removed in this order: the mounted volume first, then the one holding its image.
        self.volumes += [self.repo_volume, disk.disk_volume_of(self.repo_volume)]
        return helper

    async def run_in_gate(
        self, argv: list[str], stdin: bytes | None = None, timeout_s: float = CONFIGURE_TIMEOUT_S
    ) -> tuple[int | None, str, str]:
        assert self.gate_id is not None
        stream = ExecStream(
            self._engine,
            self.gate_id,
            self._bottle_id,
            argv,
            user=GATE_USER,
            workdir=None,
            timeout_s=timeout_s,
            output_cap=EVENTS_CAP,
            stdin=stdin,
        )
        out = await self._engine.run(stream.run, abandon_on_cancel=True)
        return out.exit_code, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")

    async def start_forwarder(self, bottle_container_id: str) -> None:
        """Join the bottle's network namespace with the forwarder and wait until its ports listen."""
        mappings = self._mappings

        mould = forwarder(
            image=GATE_IMAGE,
            command=["forward", *mappings],
            name=self._forwarder_name,
            user=GATE_USER,
            labels=self._labels("sidecar", "forwarder"),
            bottle_container_id=bottle_container_id,
            socket_volume=self.socket_volume,
            socket_dir="/run/fwd",
        )

        def create(c: docker.DockerClient) -> str:
            self.forwarder_id = mould.run(c)
            return self.forwarder_id

        fwd = await self._engine.call("create the gate forwarder", create)
        with anyio.move_on_after(READY_TIMEOUT_S):
            while True:
                text = await self._engine.call(
                    "read the gate forwarder's log", lambda c: c.api.logs(fwd, stdout=True, stderr=True)
                )
                if b"FORWARD-READY" in text:
                    return
                state = await self._engine.call("inspect the gate forwarder", lambda c: c.api.inspect_container(fwd))
                if not state["State"].get("Running"):
                    raise LaunchError(
                        f"the gate forwarder stopped while starting: {text.decode(errors='replace')[-600:]}"
                    )
                await anyio.sleep(0.05)
        raise LaunchError(f"the gate forwarder did not come up within {READY_TIMEOUT_S:g} s")

    async def records(self) -> GateRecords:
        if self.gate_id is None:
            return GateRecords([])
        mark = f"#bottle-mcp-{secrets.token_hex(8)}"
        code, out, err = await self.run_in_gate(read_logs_command(mark), timeout_s=30)
        if code != 0:
            raise EngineError(f"reading the git gate's log failed: {err.strip()[:300]}")
        return merge_events(out, mark)

    async def remove(self) -> list[str]:
        """Remove everything this stack created (idempotent, never raises for what is already gone)."""
        removed: list[str] = []
        with anyio.CancelScope(shield=True):
            removed += await self._engine.remove_containers(
                [("git forwarder", self.forwarder_id), ("git gate", self.gate_id)]
            )
            self.forwarder_id = self.gate_id = None
            for vol in list(self.volumes):
                await self._engine.remove_resource("volume", vol, "gate volume")
                removed.append(f"volume {vol}")
                self.volumes.remove(vol)
            if self.network_id is not None:
                net = self.network_id
                await self._engine.remove_resource("network", net, "gate network")
                removed.append(f"network {self.network_name}")
                self.network_id = None
        return removed
