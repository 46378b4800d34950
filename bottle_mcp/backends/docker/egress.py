"""Egress for a Docker bottle: a proxy sidecar that is the bottle's only way out.

The topology (docs/security.md says why this one):

    bottle           network "none": loopback only, no route, no DNS
      forwarder      a container in the bottle's network namespace (not its
                     file system or processes): 127.0.0.1:3128 -> Unix socket
    socket volume    shared by the forwarder and the sidecar, never by the bottle
    sidecar          mitmproxy with the policy addon, on a per-bottle bridge
                     network: the only one of them with a route out

Programs in the bottle reach the proxy through HTTP(S)_PROXY; programs that
ignore those variables find no interface to send anything through. The sidecar
generates its own CA when it starts (the key never leaves it); the certificate
is installed in the bottle's home and named by the usual trust variables.
Everything here carries the bottle's labels, so `cleanup` finds it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
from typing import Any

import anyio
import docker

from ... import labels as L
from ...auditlog import clip_fields
from ...credentials import Substitution
from ...errors import EngineError, EngineNotFoundError, ImageMissingError, LaunchError
from ...manifest import BottleDef, LoadedManifest
from ...models import EgressDecision, EgressRecords, NetworkPlan
from .engine import Engine
from .execstream import ExecStream
from .images import builtin_tag
from .mould import Mould, forwarder
from .netguard import engine_networks, host_addresses

EGRESS_IMAGE = builtin_tag("egress-proxy")
PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
SOCKET_DIR = "/run/egress"
CONF_DIR = "/run/egress-conf"
SIDECAR_USER = "10101:10101"
LOG_PREFIX = "EGRESS-LOG "
CA_PREFIX = "EGRESS-CA "
READY_TIMEOUT_S = 30.0
MIN_SCANNED_SECRET = 12
LOG_TAIL_LINES = 20000
MAX_LINE = 16384  # a longer line in the proxy's log is not one the proxy wrote (it clips its fields)
# The proxy's table of denials: one line per distinct denial, and the counts of their repeats; separated by
# a fresh nonce line (no text from the bottle can fake it).
READ_DENIALS = (
    f'cat {CONF_DIR}/denied.jsonl 2>/dev/null; printf "\\n%s\\n" "$1"; '
    f"cat {CONF_DIR}/denied-counts.json 2>/dev/null; true"
)
DENIED_CAP = 16 * 1024**2
LOG_MAX_SIZE = "16m"
DEFAULT_PORTS = (443, 80)
SUBSTITUTE_WAIT_ENV = "EGRESS_WAIT_CREDENTIALS"
HAND_OVER_TIMEOUT_S = 30.0


def allow_rules(allow: list[str]) -> list[dict[str, Any]]:
    """Manifest entries ('host', '*.domain', 'host:8443') -> the addon's rules, one per pattern."""
    ports: dict[str, list[int]] = {}
    for entry in allow:
        host, _, port = entry.partition(":")
        wanted = [int(port)] if port else list(DEFAULT_PORTS)
        have = ports.setdefault(host, [])
        have += [p for p in wanted if p not in have]
    return [{"pattern": host, "ports": p} for host, p in ports.items()]


def network_plan(bottle: BottleDef) -> NetworkPlan:
    if bottle.network == "none" or bottle.egress is None:
        return NetworkPlan(mode="none", effective="none", note="no network interface besides loopback")
    egress = bottle.egress
    hosts = [r["pattern"] for r in allow_rules(egress.allow)]
    return NetworkPlan(
        mode="egress",
        egress_allow=list(egress.allow),
        effective="egress-proxy",
        note=(
            "the bottle has no network interface besides loopback; an egress proxy (mitmproxy) in a sidecar "
            "container is its only way out, reached through a forwarder on 127.0.0.1:3128. Only the allowed "
            "names and ports (default 443 and 80) pass, for CONNECT and plain HTTP alike; the bottle cannot "
            "resolve names itself. Destinations that are not public (loopback, private, link-local, CGNAT, "
            "multicast, reserved) and every address of the host and the engine's networks are refused"
            + (", except allow_private" if egress.allow_private else "")
        ),
        intercepted=[h for h in hosts if h not in egress.passthrough],
        passthrough=list(egress.passthrough),
        credential_hosts={k: list(r.hosts) for k in egress.credentials if (r := egress.route(k)) is not None},
        proxy=f"HTTP_PROXY / HTTPS_PROXY = {PROXY_URL} (a convenience; enforcement is the topology)",
        allow_private=list(egress.allow_private),
    )


def plan_warnings(bottle: BottleDef, credentials: list[str]) -> list[str]:
    if bottle.network != "egress" or bottle.egress is None:
        return []
    warnings = []
    for name in credentials:
        value = os.environ.get(name)
        # Only a real value handed to the bottle is scanned for; stand-ins are always long enough.
        if value is not None and name in bottle.real_credentials and len(value) < MIN_SCANNED_SECRET:
            warnings.append(
                f"credential {name} is shorter than {MIN_SCANNED_SECRET} characters: the egress proxy does not "
                "scan requests for it"
            )
    if bottle.egress.passthrough:
        warnings.append(
            "TLS to " + ", ".join(bottle.egress.passthrough) + " is passed through unopened: requests there are not "
            "scanned for credentials"
        )
    return warnings


def bottle_env(home: str) -> dict[str, str]:
    """Variables for well-behaved programs: the proxy and the trust store that includes the proxy's CA."""
    bundle = f"{home}/.bottle-mcp/egress-ca-bundle.pem"
    return {
        "HTTP_PROXY": PROXY_URL,
        "HTTPS_PROXY": PROXY_URL,
        "http_proxy": PROXY_URL,
        "https_proxy": PROXY_URL,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "GIT_SSL_CAINFO": bundle,
        "PIP_CERT": bundle,
        "NODE_EXTRA_CA_CERTS": f"{home}/.bottle-mcp/egress-ca.pem",
    }


# Run inside the bottle with the CA certificate on stdin, before the agent gets control.
INSTALL_CA = (
    'd="$HOME/.bottle-mcp" && mkdir -p "$d" && cat > "$d/egress-ca.pem" && '
    '{ cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null; cat "$d/egress-ca.pem"; } > "$d/egress-ca-bundle.pem"'
)


def policy(lm: LoadedManifest, bottle: BottleDef, credentials: list[str]) -> dict[str, Any]:
    """The addon's policy, as the container's environment shows it: nothing secret.

    Credentials the bottle holds with their real value (real_credentials) are scanned for, and
    go in as a short prefix, a length and a hash, never whole. Stand-ins and the real values they
    replace reach the proxy another way (`EgressStack.hand_over`).
    """
    assert bottle.egress is not None
    creds = []
    for name in credentials:
        value = os.environ.get(name)
        if value is None or len(value) < MIN_SCANNED_SECRET or name not in bottle.real_credentials:
            continue
        raw = value.encode()
        creds.append(
            {
                "name": name,
                "prefix": value[:6],
                "length": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "hosts": list(route.hosts) if (route := bottle.egress.route(name)) is not None else [],
            }
        )
    return {
        "allow": allow_rules(bottle.egress.allow),
        "passthrough": list(bottle.egress.passthrough),
        "credentials": creds,
        "allow_private": list(bottle.egress.allow_private),
    }


def _decision(raw: object) -> tuple[int, EgressDecision] | None:
    """(its number, the decision) from one record the proxy wrote, clipped again here; None if malformed."""
    if not isinstance(raw, dict):
        return None
    seq = raw.get("seq")
    try:
        return (seq if isinstance(seq, int) else 0), EgressDecision.model_validate(clip_fields(raw))
    except ValueError:
        return None


def parse_decisions(text: str) -> list[EgressDecision]:
    """The allowed decisions in the proxy's log (lines `EGRESS-LOG {json}`), clipped field by field."""
    return [d for _, d in _parse_allowed(text)]


def _parse_allowed(text: str) -> list[tuple[int, EgressDecision]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(LOG_PREFIX):
            continue
        try:
            parsed = _decision(json.loads(line[len(LOG_PREFIX) : len(LOG_PREFIX) + MAX_LINE]))
        except ValueError:
            continue
        if parsed is not None:
            out.append(parsed)
    return out


def merge_records(log_text: str, denied_lines: str, counts_json: str) -> EgressRecords:
    """Allowed decisions from the proxy's log and its table of denials, oldest first.

    Allowed decisions are numbered from 1: those missing before the first one held were rotated out of
    the engine's log. Each distinct denial is a line of its own (numbered too); its repeats are counted
    in the counts file. Denials beyond the proxy's table of distinct ones were only counted.
    """
    allowed = _parse_allowed(log_text)
    dropped = max(allowed[0][0] - 1, 0) if allowed else 0
    try:
        table = json.loads(counts_json) if counts_json.strip() else {}
    except ValueError:
        table = {}
    if not isinstance(table, dict):
        table = {}
    counts = table.get("counts")
    if not isinstance(counts, dict):
        counts = {}
    denied: list[tuple[int, EgressDecision]] = []
    for line in denied_lines.splitlines():
        try:
            raw = json.loads(line[:MAX_LINE])
        except ValueError:
            continue
        seen = counts.get(str(raw.get("seq"))) if isinstance(raw, dict) else None
        if isinstance(raw, dict) and isinstance(seen, list) and len(seen) == 2 and isinstance(seen[0], int):
            raw = {**raw, "count": seen[0], "last_time": str(seen[1])}
        parsed = _decision(raw)
        if parsed is not None:
            denied.append(parsed)
    overflow, total = table.get("overflow"), table.get("total")
    dropped += overflow if isinstance(overflow, int) else 0
    denied_total = max(total if isinstance(total, int) else 0, sum(d.count for _, d in denied))
    # One timeline: by time, allowed before denied within a second, each in its own order.
    merged = sorted(
        [(d.time, 0, n, d) for n, d in allowed] + [(d.time, 1, n, d) for n, d in denied], key=lambda t: t[:3]
    )
    return EgressRecords(decisions=[t[3] for t in merged], denied=denied_total, dropped=dropped)


class EgressStack:
    """The sidecar, forwarder, socket volume and network of one bottle."""

    def __init__(self, engine: Engine, instance: L.Instance, name: str, extra: dict[str, str]) -> None:
        self._engine = engine
        self._instance = instance
        self._extra = extra
        self.network_name = f"{name}-egress"
        self.volume_name = f"{name}-egress-sock"
        self._sidecar_name = f"{name}-egress-proxy"
        self._forwarder_name = f"{name}-egress-fwd"
        self.network_id: str | None = None
        self.volume_made = False
        self.sidecar_id: str | None = None
        self.forwarder_id: str | None = None
        self.allow: list[str] = []

    def _labels(self, role: L.Role, what: str) -> dict[str, str]:
        return self._instance.labels(role, **self._extra, **{f"{L.PREFIX}.egress": what})

    async def start_proxy(
        self,
        lm: LoadedManifest,
        bottle: BottleDef,
        credentials: list[str],
        substitutions: list[Substitution] | None = None,
    ) -> None:
        """Create network, socket volume and sidecar, and start it (`wait_ready` waits until it answers).

        With substitutions, the proxy waits for them before it listens; they go in over an exec's
        stdin (`hand_over`), never through the container's configuration.
        """
        assert bottle.egress is not None
        self.allow = list(bottle.egress.allow)
        try:
            await self._engine.call("inspect egress image", lambda c: c.images.get(EGRESS_IMAGE).id)
        except EngineNotFoundError:
            raise ImageMissingError(
                EGRESS_IMAGE, "build it with `bottle-mcp images` (or run scripts/setup.sh)"
            ) from None
        rules = policy(lm, bottle, credentials)
        env: dict[str, str] = {}
        if substitutions:
            env[SUBSTITUTE_WAIT_ENV] = "1"
        if bottle.egress.upstream_ca is not None:
            env["EGRESS_UPSTREAM_CA"] = lm.resolve(bottle.egress.upstream_ca).read_text()

        def create(c: docker.DockerClient) -> None:
            net = c.api.create_network(
                self.network_name,
                driver="bridge",
                labels=self._labels("network", "network"),
                enable_ipv6=False,
            )
            self.network_id = str(net["Id"])
            # After the bottle's own network exists: the proxy refuses every engine network and host address.
            env["EGRESS_POLICY"] = json.dumps(
                {**rules, "deny_addresses": sorted({*engine_networks(c), *host_addresses()})}
            )
            c.api.create_volume(name=self.volume_name, labels=self._labels("sidecar", "socket"))
            self.volume_made = True
            self.sidecar_id = Mould(
                image=EGRESS_IMAGE,
                command=["proxy"],
                name=self._sidecar_name,
                user=SIDECAR_USER,
                environment=env,
                labels=self._labels("sidecar", "proxy"),
                network_mode=self.network_name,
                mounts=(docker.types.Mount(target=SOCKET_DIR, source=self.volume_name, type="volume"),),
                tmpfs={CONF_DIR: "rw,nosuid,nodev,size=64m,uid=10101,gid=10101,mode=0700"},
                pids=256,
                memory=512 * 1024**2,
                # The decision log is the container's output (read back through the engine): a larger
                # rotation than the mould's default, still bounded.
                log_max_size=LOG_MAX_SIZE,
            ).run(c)

        await self._engine.call("create the egress proxy", create)
        if substitutions:
            await self.hand_over(substitutions)

    async def hand_over(self, substitutions: list[Substitution]) -> None:
        """Give the proxy its stand-ins and real values through an exec's stdin.

        The engine shows an exec's command, never its stdin: the values land in the sidecar's
        tmpfs, which the proxy reads once at start and deletes.
        """
        sidecar = self.sidecar_id
        assert sidecar is not None
        payload = json.dumps([s.for_proxy() for s in substitutions]).encode()
        stream = ExecStream(
            self._engine,
            sidecar,
            self._extra.get(L.BOTTLE, "?"),
            ["/opt/egress/entrypoint.sh", "credentials"],
            user=SIDECAR_USER,
            workdir=None,
            timeout_s=HAND_OVER_TIMEOUT_S,
            output_cap=4096,
            stdin=payload,
        )
        out = await anyio.to_thread.run_sync(stream.run, abandon_on_cancel=True)
        if out.exit_code != 0:
            err = out.stderr.decode(errors="replace").strip()[-300:]
            raise LaunchError(f"handing the credentials to the egress proxy failed: {err or out.exit_code}")

    async def wait_ready(self) -> str:
        """Wait until the proxy listens; return its CA certificate (PEM)."""
        sidecar = self.sidecar_id
        assert sidecar is not None
        with anyio.move_on_after(READY_TIMEOUT_S):
            while True:
                text = await self._engine.call(
                    "read the egress proxy's log", lambda c: c.api.logs(sidecar, stdout=True, stderr=True)
                )
                for line in text.decode(errors="replace").splitlines():
                    if line.startswith(CA_PREFIX):
                        return base64.b64decode(line[len(CA_PREFIX) :]).decode()
                state = await self._engine.call("inspect the egress proxy", lambda c: c.api.inspect_container(sidecar))
                if not state["State"].get("Running"):
                    tail = text.decode(errors="replace")[-800:]
                    raise LaunchError(f"the egress proxy stopped while starting (its log ends with: {tail!r})")
                await anyio.sleep(0.1)
        raise LaunchError(f"the egress proxy did not come up within {READY_TIMEOUT_S:g} s")

    async def start_forwarder(self, bottle_container_id: str) -> None:
        """Join the bottle's network namespace with a forwarder to the proxy's socket."""

        mould = forwarder(
            image=EGRESS_IMAGE,
            command=["forward"],
            name=self._forwarder_name,
            user=SIDECAR_USER,
            labels=self._labels("sidecar", "forwarder"),
            bottle_container_id=bottle_container_id,
            socket_volume=self.volume_name,
            socket_dir=SOCKET_DIR,
        )

        def create(c: docker.DockerClient) -> None:
            self.forwarder_id = mould.run(c)

        await self._engine.call("create the egress forwarder", create)

    async def records(self) -> EgressRecords:
        """The proxy's allowed decisions (from its log) and its table of denials (a file in the sidecar)."""
        sidecar = self.sidecar_id
        if sidecar is None:
            return EgressRecords([])
        text = await self._engine.call(
            "read the egress log", lambda c: c.api.logs(sidecar, stdout=True, stderr=False, tail=LOG_TAIL_LINES)
        )
        mark = f"#bottle-mcp-{secrets.token_hex(8)}"
        stream = ExecStream(
            self._engine,
            sidecar,
            "egress-proxy",
            ["/bin/sh", "-c", READ_DENIALS, "egress-denials", mark],
            user=SIDECAR_USER,
            workdir=None,
            timeout_s=30,
            output_cap=DENIED_CAP,
        )
        out = await anyio.to_thread.run_sync(stream.run, abandon_on_cancel=True)
        # Files not there yet: nothing was denied. Output over the cap (the proxy's bound prevents it) is ignored.
        both = out.stdout.decode(errors="replace") if out.stdout_bytes <= DENIED_CAP else ""
        lines, _, counts = both.partition(f"\n{mark}\n")
        return merge_records(text.decode(errors="replace"), lines, counts)

    async def remove(self) -> list[str]:
        """Remove everything this stack created (idempotent, never raises for what is already gone)."""
        removed: list[str] = []
        with anyio.CancelScope(shield=True):
            removed += await self._engine.remove_containers(
                [("egress forwarder", self.forwarder_id), ("egress proxy", self.sidecar_id)]
            )
            self.forwarder_id = self.sidecar_id = None
            if self.volume_made:
                await self._engine.remove_resource("volume", self.volume_name, "egress socket volume")
                removed.append(f"volume {self.volume_name}")
                self.volume_made = False
            if self.network_id is not None:
                net = self.network_id
                # Nothing else belongs on this network; whatever was attached to it goes off first.
                with contextlib.suppress(EngineError):
                    await self._engine.call("detach from egress network", lambda c: _detach_all(c, net))
                await self._engine.remove_resource("network", net, "egress network")
                removed.append(f"network {self.network_name}")
                self.network_id = None
        return removed


def _detach_all(c: docker.DockerClient, network_id: str) -> None:
    for container_id in c.api.inspect_network(network_id).get("Containers") or {}:
        with contextlib.suppress(docker.errors.APIError):
            c.api.disconnect_container_from_network(container_id, network_id, force=True)
