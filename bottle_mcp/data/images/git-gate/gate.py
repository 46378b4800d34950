"""The gate sidecar of one bottle (git and ssh entries), and the forwarder beside the bottle.

    gate.py serve       the gate's main process: waits for `configure`, then runs
                        git daemon (bare repositories, pre-receive hook), the relays
                        and the ssh agents, and exits when any of them dies
    gate.py configure   run once at launch with the configuration (keys included)
                        on stdin: writes keys to the gate's tmpfs, mirrors each
                        upstream into its bare repository, starts serving
    gate.py hook        git's pre-receive hook: validates refs, scans every object
                        the push carries and every ref name, forwards the push
                        upstream; refuses otherwise
    gate.py forward PORT:SOCKET...
                        the forwarder, in the bottle's network namespace: each
                        127.0.0.1:PORT -> /run/fwd/SOCKET (the gate's end)

Every command the gate runs is an argv list; ref names are checked against a
strict pattern before git or ssh see them, and `--` ends options before operands.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GATE = Path("/run/gate")
KEYS = GATE / "keys"
CONFIG = GATE / "config.json"
EVENTS = GATE / "events.jsonl"
EVENTS_OLD = GATE / "events.1.jsonl"
EVENTS_ROTATE = 4 * 1024**2  # the log keeps the latest 4 to 8 MiB of events (on a 16 MiB tmpfs)
REFUSED = GATE / "refused.jsonl"  # refused pushes: a log of their own, so they never crowd out the others
REFUSED_DROPPED = GATE / "refused.dropped"  # how many refused pushes were only counted
REFUSED_MAX_BYTES = 2 * 1024**2
MAX_FIELD = 200
MAX_ITEMS = 20  # ref names (and other list items) kept in one event; `lengths` has how many there were
SERVING = GATE / "serving"
SERVE_ERROR = GATE / "serve-error"
FWD = Path("/run/fwd")
REPOS = Path("/srv/git")
HOOKS = "/opt/gate/hooks"
GIT_PORT = 9418
ZERO = "0" * 40
REF_RE = re.compile(r"^refs/(heads|tags)/[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,9}$")
SOCK_RE = re.compile(r"^[a-z0-9-]{1,40}\.sock$")
OID_RE = re.compile(r"^[0-9a-f]{40}$")
READY_WAIT_S = 20.0


def valid_ref(ref: str) -> bool:
    """A branch or tag name that no git or ssh command line can take for anything but a name."""
    return bool(REF_RE.fullmatch(ref)) and ".." not in ref and not ref.endswith(".lock")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def clip_event(record: dict[str, Any]) -> dict[str, Any]:
    """Every text clipped to MAX_FIELD characters, every list to MAX_ITEMS; original sizes in `lengths`."""
    lengths: dict[str, int] = {}
    out = {key: _clipped(key, value, lengths) for key, value in record.items()}
    if lengths:
        out["lengths"] = lengths
    return out


def _clipped(key: str, value: Any, lengths: dict[str, int]) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        lengths[key] = len(value)
        return value[:MAX_FIELD] + "..."
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            lengths[key] = len(value)
        return [v[:MAX_FIELD] + "..." if isinstance(v, str) and len(v) > MAX_FIELD else v for v in value[:MAX_ITEMS]]
    return value


def event(kind: str, remote: str, **fields: Any) -> None:
    """Append one event to the gate's log (read by the server's gate_log tool).

    Refused pushes go to a bounded log of their own: past REFUSED_MAX_BYTES they are only counted.
    The others rotate once past EVENTS_ROTATE.
    """
    line = json.dumps(clip_event({"time": now(), "kind": kind, "remote": remote, **fields}), sort_keys=True)
    path = REFUSED if kind == "refused" else EVENTS
    if path == EVENTS:
        with contextlib.suppress(FileNotFoundError):
            if EVENTS.stat().st_size > EVENTS_ROTATE:
                EVENTS.replace(EVENTS_OLD)
    with path.open("a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if kind == "refused" and f.tell() + len(line) > REFUSED_MAX_BYTES:
            _count_dropped()
            return
        f.write(line + "\n")


def _count_dropped() -> None:
    fd = os.open(REFUSED_DROPPED, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read().strip()
        f.seek(0)
        f.truncate()
        f.write(str((int(text) if text.isdigit() else 0) + 1))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- upstream access ---------------------------------------------------------------------


def ssh_command(entry: dict[str, Any], *, first_contact: bool = False) -> str:
    """GIT_SSH_COMMAND for one upstream. Every path in it is the gate's own, never the agent's."""
    i = int(entry["index"])
    checking = "accept-new" if first_contact else "yes"
    return (
        f"ssh -F /dev/null -i {KEYS}/git-{i} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes "
        f"-o ConnectTimeout=15 -o PasswordAuthentication=no -o GlobalKnownHostsFile=/dev/null "
        f"-o UserKnownHostsFile={GATE}/known_hosts-git-{i} -o StrictHostKeyChecking={checking}"
    )


def upstream_git(entry: dict[str, Any], *args: str, first_contact: bool = False, timeout: float = 300) -> str:
    env = {
        **os.environ,
        "GIT_SSH_COMMAND": ssh_command(entry, first_contact=first_contact),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_VARIANT": "ssh",
    }
    # Only ssh may be used to reach an upstream, whatever the URL says.
    argv = ["git", "-c", "protocol.allow=never", "-c", "protocol.ssh.allow=always", *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-1500:] or f"git {args[0]} failed with status {proc.returncode}")
    return proc.stdout


# -- configure -----------------------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def cmd_configure() -> int:
    data = json.load(sys.stdin)
    KEYS.mkdir(mode=0o700, exist_ok=True)
    EVENTS.touch(mode=0o600)
    for entry in data["git"]:
        i = int(entry["index"])
        write_secret(KEYS / f"git-{i}", entry.pop("key"))
        known = GATE / f"known_hosts-git-{i}"
        known.write_text("".join(line + "\n" for line in entry["known_hosts"]))
    for entry in data["ssh"]:
        write_secret(KEYS / f"ssh-{int(entry['index'])}", entry.pop("key"))
        try:
            ssh_host_keys(entry)
        except RuntimeError as e:
            event("error", f"ssh[{int(entry['index'])}]", detail=str(e))
            say(str(e))
            return 1
    for entry in data["git"]:
        try:
            mirror(entry)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            event("error", entry["name"], upstream=entry["upstream"], detail=f"initial fetch failed: {e}")
            hint = ""
            if "Host key verification failed" in str(e):
                hint = (
                    " Its host key does not match known_host_key in the manifest: compare the pinned key with "
                    "the output of `ssh-keyscan -p PORT HOST` from a network you trust."
                )
            say(
                f"the upstream of git remote {entry['name']!r} ({entry['upstream']}) could not be fetched.{hint} "
                f"ssh and git said: {str(e)[-700:]}"
            )
            return 1
    tmp = CONFIG.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(CONFIG)
    deadline = time.monotonic() + READY_WAIT_S
    while not SERVING.exists():
        if SERVE_ERROR.exists():
            say(f"the gate could not start serving: {SERVE_ERROR.read_text().strip()}")
            return 1
        if time.monotonic() > deadline:
            say("the gate did not start serving in time")
            return 1
        time.sleep(0.05)
    print(json.dumps({"ready": True}))
    return 0


def ssh_alias(i: int) -> str:
    """The name the gate's agent knows ssh entry i's host by (only in its own known_hosts file)."""
    return f"ssh-entry-{i}"


def ssh_host_keys(entry: dict[str, Any]) -> None:
    """The host keys the agent's constraint for ssh entry i names: the manifest's pin, or the keys the
    host shows now (trusted on first use, recorded in the log)."""
    i = int(entry["index"])
    keys = list(entry.get("host_keys") or [])
    if not keys:
        scanned = subprocess.run(
            ["ssh-keyscan", "-T", "10", "-p", str(int(entry["port"])), entry["hostname"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        keys = [" ".join(line.split()[1:3]) for line in scanned.stdout.splitlines() if len(line.split()) >= 3]
        keys = [k for k in keys if not k.startswith("#")]
        if not keys:
            raise RuntimeError(
                f"ssh host {entry['hostname']}:{entry['port']} showed no host key to the gate "
                f"(ssh-keyscan said: {scanned.stderr.strip()[-300:]}); is it up, and is it an ssh server?"
            )
    path = GATE / f"known_hosts-ssh-{i}"
    path.write_text("".join(f"{ssh_alias(i)} {k}\n" for k in keys))
    if not entry.get("host_keys"):
        fingerprints = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=False
        ).stdout.split("\n")
        event(
            "hostkey",
            f"ssh[{i}]",
            upstream=f"{entry['hostname']}:{entry['port']}",
            detail="not pinned: the agent signs logins only to the host showing these keys (trusted on first "
            "use): " + "; ".join(f.strip() for f in fingerprints if f.strip()),
        )


def mirror(entry: dict[str, Any]) -> None:
    """Create the entry's bare repository and fill it from the upstream."""
    name, url = entry["name"], entry["upstream"]
    repo = REPOS / f"{name}.git"
    subprocess.run(["git", "init", "-q", "--bare", "--", str(repo)], check=True)
    settings = {
        "core.hooksPath": HOOKS,
        "receive.denyDeletes": "true",
        "receive.denyNonFastForwards": "true",
        "receive.advertisePushOptions": "false",
        "receive.fsckObjects": "true",
        "gc.auto": "0",
        "uploadpack.allowAnySHA1InWant": "false",
    }
    for key, value in settings.items():
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True)
    pinned = bool(entry["known_hosts"])
    heads = upstream_git(entry, "ls-remote", "--symref", "--", url, "HEAD", first_contact=not pinned, timeout=60)
    if not pinned:
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(GATE / f"known_hosts-git-{int(entry['index'])}")],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        event("hostkey", name, upstream=url, detail=f"not pinned: trusted on first use: {fingerprint}")
    upstream_git(
        entry, "-C", str(repo), "fetch", "--quiet", "--", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"
    )
    for line in heads.splitlines():
        m = re.match(r"^ref: (refs/heads/\S+)\tHEAD$", line)
        if m and valid_ref(m.group(1)):
            subprocess.run(["git", "-C", str(repo), "symbolic-ref", "HEAD", m.group(1)], check=True)
    count = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname)"], capture_output=True, text=True, check=True
    ).stdout.split()
    event("fetch", name, upstream=url, refs=count, detail=f"mirrored {len(count)} refs from the upstream")


# -- serve ---------------------------------------------------------------------------------


def wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not appear")
        time.sleep(0.05)


def supervise(procs: list[subprocess.Popen[bytes]], ready: str) -> int:
    """Wait for the first child to end, then stop the others and exit with a failure."""
    print(ready, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            for p in procs:
                if p.poll() is not None:
                    say(f"{p.args!r} exited with status {p.returncode}; stopping")
                    return 1
            time.sleep(0.5)
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                p.terminate()


def listen(sock: str, target: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["socat", f"UNIX-LISTEN:{FWD / sock},fork,mode=600,unlink-early", target])


def cmd_serve() -> int:
    while not CONFIG.exists():
        time.sleep(0.05)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start_serving(json.loads(CONFIG.read_text()), procs)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        SERVE_ERROR.write_text(str(e))
        for p in procs:
            p.terminate()
        return 1
    return supervise(procs, "GATE-READY")


def start_serving(data: dict[str, Any], procs: list[subprocess.Popen[bytes]]) -> None:
    if data["git"]:
        procs.append(
            subprocess.Popen(
                [
                    "git",
                    "daemon",
                    "--reuseaddr",
                    "--listen=127.0.0.1",
                    f"--port={GIT_PORT}",
                    f"--base-path={REPOS}",
                    "--export-all",
                    "--enable=receive-pack",
                    "--informative-errors",
                    "--init-timeout=30",
                    "--max-connections=16",
                    "--",
                    str(REPOS),
                ]
            )
        )
        procs.append(listen("git.sock", f"TCP:127.0.0.1:{GIT_PORT}"))
    for entry in data["ssh"]:
        i = int(entry["index"])
        # The L4 relay: the only place this bottle's ssh traffic can go is this host:port.
        procs.append(listen(f"ssh-{i}.sock", f"TCP:{entry['hostname']}:{int(entry['port'])}"))
        agent_sock = GATE / f"agent-{i}.sock"
        procs.append(subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL))
        wait_for(agent_sock, f"the ssh agent of ssh[{i}]")
        key = KEYS / f"ssh-{i}"
        # Destination-constrained (OpenSSH 8.9+): the agent signs only a login, as the declared user, to
        # a host that proves it holds one of these host keys in the session it signs for. Anything
        # else (an SSHSIG over chosen data, a login to any other host) is refused by the agent itself.
        hosts = GATE / f"known_hosts-ssh-{i}"
        added = subprocess.run(
            ["ssh-add", "-q", "-H", str(hosts), "-h", f"{entry['user']}@{ssh_alias(i)}", "--", str(key)],
            env={**os.environ, "SSH_AUTH_SOCK": str(agent_sock), "SSH_ASKPASS_REQUIRE": "never"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            raise RuntimeError(f"the key of ssh[{i}] could not be loaded into the agent: {added.stderr.strip()[:300]}")
        key.unlink()  # from here on the key lives only in the agent's memory
        procs.append(listen(f"agent-{i}.sock", f"UNIX-CONNECT:{agent_sock}"))
    socks = (["git.sock"] if data["git"] else []) + [
        f"{kind}-{int(e['index'])}.sock" for e in data["ssh"] for kind in ("ssh", "agent")
    ]
    for s in socks:
        wait_for(FWD / s, f"socket {s}")
    SERVING.touch()


# -- the pre-receive hook ------------------------------------------------------------------


MAX_SHOWN = 50  # findings shown to the agent and kept in the log, per refusal
MAX_LINE = 300


def clip(text: str, limit: int = MAX_LINE) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def refuse(remote: str, refs: list[str], reason: str, lines: list[str]) -> int:
    """Tell the agent why (it reads these as `remote:` lines) and log it, both bounded."""
    shown = [clip(line) for line in lines[:MAX_SHOWN]]
    more = [f"... and {len(lines) - MAX_SHOWN} more"] if len(lines) > MAX_SHOWN else []
    say("")
    say(f"bottle-mcp git gate: push to {remote!r} refused: {reason}")
    for line in shown + more:
        say(f"  {line}")
    say("Nothing was changed, here or upstream.")
    event("refused", remote, refs=refs, detail=clip(reason, 600), findings=shown + more)
    return 1


def cmd_hook() -> int:
    repo = Path(os.environ.get("GIT_DIR", ".")).resolve()
    remote = repo.name.removesuffix(".git")
    data = json.loads(CONFIG.read_text())
    entry = next((e for e in data["git"] if e["name"] == remote), None)
    if entry is None:
        say(f"bottle-mcp git gate: {remote!r} is not a configured remote")
        return 1
    updates: list[tuple[str, str, str]] = []
    for raw in sys.stdin.read().splitlines():
        parts = raw.split(" ", 2)
        if len(parts) == 3:
            updates.append((parts[0], parts[1], parts[2]))
    sys.path.insert(0, "/opt/gate")
    import scan

    scanner = scan.Scanner(data.get("credentials", []))
    # Ref names first: a name holding a secret is never repeated, not even in a refusal for its form.
    result = scan.scan_refs(updates, scanner)
    refs = result.refs
    bad = [shown for (_o, _n, ref), shown in zip(updates, refs, strict=True) if not valid_ref(ref)]
    if bad:
        return refuse(
            remote,
            [],
            "ref names must be refs/heads/NAME or refs/tags/NAME, each part starting with a letter or digit "
            "and using only letters, digits, '.', '_' and '-'",
            bad,
        )
    for (old, new, ref), shown in zip(updates, refs, strict=True):
        if not (OID_RE.fullmatch(old) and OID_RE.fullmatch(new)):
            return refuse(remote, refs, "malformed update", [shown])
        if new == ZERO:
            return refuse(remote, refs, "deleting refs is not allowed through the gate", [shown])
        if old != ZERO:
            if ref.startswith("refs/tags/"):
                return refuse(remote, refs, "existing tags cannot be moved", [shown])
            ff = subprocess.run(["git", "merge-base", "--is-ancestor", old, new], check=False)
            if ff.returncode != 0:
                return refuse(remote, refs, "only fast-forward updates pass the gate (no force pushes)", [shown])

    with (GATE / "push.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            scan.scan_push(repo, result, scanner)
        except scan.ScanError as e:
            return refuse(remote, refs, f"the push could not be scanned: {e}", [])
        if result.findings:
            return refuse(
                remote,
                refs,
                f"{len(result.findings)} possible secret(s) in the pushed objects or ref names (the gate's own "
                "scanner; allowlist files and inline allow comments in the push do not apply). Rewrite the "
                "objects or rename the refs without them",
                [f.describe() for f in result.findings],
            )
        specs = [f"{new}:{ref}" for _old, new, ref in updates]
        try:
            upstream_git(entry, "push", "--porcelain", "--atomic", "--quiet", "--", entry["upstream"], *specs)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            say(f"bottle-mcp git gate: the upstream refused or failed; nothing was changed:\n{e}")
            event("upstream-failed", remote, refs=refs, upstream=entry["upstream"], detail=str(e)[-800:])
            return 1
        event(
            "pushed",
            remote,
            refs=refs,
            upstream=entry["upstream"],
            commits=result.commits,
            detail=clip(
                ", ".join(f"{ref} -> {new[:12]}" for (_o, new, _r), ref in zip(updates, refs, strict=True))
                + f"; scanned {result.summary()}, {result.scanned_bytes} bytes in {result.seconds:.2f} s",
                1000,
            ),
        )
        say(f"bottle-mcp git gate: scanned {result.summary()}, pushed to {entry['upstream']}")
    return 0


# -- the forwarder -------------------------------------------------------------------------


def cmd_forward(mappings: list[str]) -> int:
    procs = []
    ports = []
    for m in mappings:
        port_text, _, sock = m.partition(":")
        port = int(port_text)
        if not (1024 <= port <= 65535 and SOCK_RE.fullmatch(sock)):
            say(f"bad mapping {m!r}")
            return 2
        ports.append(port)
        procs.append(
            subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{FWD / sock}"]
            )
        )
    deadline = time.monotonic() + READY_WAIT_S
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    say(f"port {port} did not open")
                    return 1
                time.sleep(0.05)
    return supervise(procs, "FORWARD-READY")


def main(argv: list[str]) -> int:
    os.umask(0o077)
    cmd = argv[1] if len(argv) > 1 else "serve"
    if cmd == "serve":
        return cmd_serve()
    if cmd == "configure":
        return cmd_configure()
    if cmd == "hook":
        return cmd_hook()
    if cmd == "forward":
        return cmd_forward(argv[2:])
    say(f"gate.py: unknown command {cmd!r} (serve, configure, hook, forward)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
