"""mitmproxy addon: the egress policy of one bottle.

Runs inside the egress sidecar (Debian's python3 and mitmproxy, nothing from
the project is imported). The policy comes in the environment variable
EGRESS_POLICY as JSON:

    {"allow": [{"pattern": "api.example.com", "ports": [443, 80]},
               {"pattern": "*.pypi.org", "ports": [443]}],
     "passthrough": ["pinned.example.com"],
     "credentials": [{"name": "API_KEY", "prefix": "sk-12", "length": 40,
                      "sha256": "...", "hosts": ["api.example.com"]}]}

Allowed decisions are printed as one line `EGRESS-LOG {json}` each on stdout
(numbered, so the server can tell how many the engine's log rotation dropped);
the server reads them from the container's log. Denials never go there: they are
aggregated per distinct decision (a count, the first and last time) in a bounded
table (DENIED_FILE, COUNTS_FILE), so a bottle repeating or varying refused
requests can neither rotate allowed decisions out of the log nor grow anything
without bound. Every text field is clipped to MAX_FIELD characters, with the
original length kept in `lengths`.

Rules, in order:
- a destination must be a lower-case DNS name (no IP literal, no trailing
  dot, no upper case, no userinfo) matching an allow rule on an allowed port;
- CONNECT and absolute-URI HTTP are checked alike; in an intercepted tunnel
  each request is checked again, and its Host header must name the tunnel's host;
- the name's addresses are resolved here and refused when any is not public
  (egress_addrs.py: loopback, private, link-local, CGNAT, multicast, reserved,
  documentation and benchmarking ranges, in IPv4, IPv6 and the IPv6 forms that
  carry an IPv4 address), or belongs to the host or the engine's networks, unless
  the manifest's allow_private names it; the connection then goes to the checked
  address, so a second lookup cannot change it. Every protocol the proxy carries
  (HTTP, CONNECT tunnels, HTTP/2 and WebSocket inside them) connects through
  that one check;
- TLS to hosts not listed in passthrough is intercepted with this sidecar's own
  CA, and requests carrying a forwarded credential to a host that credential is
  not declared for are refused: every part of a request is scanned (method,
  target, header names and values, body, trailers, HTTP/2 pseudo-headers, the
  WebSocket upgrade and the messages after it), and the CONNECT's own target.
  Raw (non-TLS, non-HTTP) bytes in a tunnel are refused unless the host is
  passthrough;
- credentials the bottle holds as stand-ins get their real value in requests to
  their declared hosts, and a stand-in anywhere else refuses the request
  (substitute.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse

from mitmproxy import http, tls
from mitmproxy.proxy import server_hooks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from egress_addrs import AddressPolicy
from substitute import Substitutor

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")
MAX_FIELD = 200
MAX_DENIED = 2000  # distinct denials kept; more are only counted (overflow)
FLUSH_S = 0.5
DENIED_FILE = os.path.join(os.environ.get("HOME", "/run/egress-conf"), "denied.jsonl")
COUNTS_FILE = os.path.join(os.environ.get("HOME", "/run/egress-conf"), "denied-counts.json")


def _load_policy() -> dict:
    return json.loads(os.environ.get("EGRESS_POLICY") or '{"allow": []}')


def _gateways() -> set[str]:
    """Default gateways of this sidecar (the engine's host on each network)."""
    found: set[str] = set()
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[2] != "00000000":
                    found.add(socket.inet_ntoa(struct.pack("<L", int(fields[2], 16))))
    except OSError:
        pass
    return found


def _clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD] + "..."


def clip_record(record: dict) -> dict:
    """Clip every text field to MAX_FIELD characters; original lengths of clipped ones go in `lengths`."""
    lengths = {k: len(v) for k, v in record.items() if isinstance(v, str) and len(v) > MAX_FIELD}
    out = {k: _clip(v) if k in lengths else v for k, v in record.items()}
    if lengths:
        out["lengths"] = lengths
    return out


class AllowedLog:
    """Allowed decisions: numbered lines on stdout (the container's log)."""

    def __init__(self) -> None:
        self.seq = 0
        self.lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self.lock:
            self.seq += 1
            line = json.dumps({**record, "seq": self.seq}, sort_keys=True)
        print("EGRESS-LOG " + line, flush=True)


class DenialLog:
    """Denials aggregated per distinct decision in a bounded table.

    The first of each distinct denial is appended to DENIED_FILE at once (at most MAX_DENIED lines);
    repeats only raise its count, and the counts are written to COUNTS_FILE every FLUSH_S seconds.
    """

    def __init__(self, path: str, counts_path: str) -> None:
        self.path = path
        self.counts_path = counts_path
        self.entries: dict = {}  # the decision without its time -> {"seq", "count", "last_time"}
        self.overflow = 0
        self.total = 0
        self.dirty = False
        self.lock = threading.Lock()
        threading.Thread(target=self._flusher, name="denial-log", daemon=True).start()

    def add(self, record: dict) -> None:
        key = json.dumps({k: v for k, v in record.items() if k != "time"}, sort_keys=True)
        with self.lock:
            self.total += 1
            self.dirty = True
            entry = self.entries.get(key)
            if entry is not None:
                entry["count"] += 1
                entry["last_time"] = record["time"]
                return
            if len(self.entries) >= MAX_DENIED:
                self.overflow += 1
                return
            self.entries[key] = {"seq": len(self.entries) + 1, "count": 1, "last_time": record["time"]}
            line = json.dumps({**record, "seq": len(self.entries)}, sort_keys=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def flush(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            counts = {str(e["seq"]): [e["count"], e["last_time"]] for e in self.entries.values() if e["count"] > 1}
            data = {"counts": counts, "overflow": self.overflow, "total": self.total}
            self.dirty = False
        tmp = self.counts_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
        os.replace(tmp, self.counts_path)

    def _flusher(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            with contextlib.suppress(OSError):  # the tmpfs is the sidecar's own; try again next time
                self.flush()


def matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class EgressPolicy:
    def __init__(self) -> None:
        policy = _load_policy()
        self.allow: list[dict] = policy.get("allow", [])
        self.passthrough: list[str] = policy.get("passthrough", [])
        self.credentials: list[dict] = policy.get("credentials", [])
        self.gateways = _gateways()
        self.addresses = AddressPolicy(
            policy.get("allow_private", []), [*policy.get("deny_addresses", []), *self.gateways]
        )
        self.tunnels: dict[str, str] = {}  # client connection id -> the CONNECT host
        self.pinned: dict[tuple[str, int], str] = {}  # checked address -> the name it was resolved from
        self.substitutor = Substitutor()  # stand-ins -> real values, for their declared hosts only
        self.allowed_log = AllowedLog()
        self.denial_log = DenialLog(DENIED_FILE, COUNTS_FILE)

    # -- helpers -----------------------------------------------------------------

    def log(self, action: str, kind: str, host: object, port: object, reason: str, **extra: object) -> None:
        # Forwarded credentials are replaced before anything is clipped (a cut value would not match).
        record = clip_record(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "action": action,
                "kind": kind,
                "host": self.redact(str(host)),
                "port": port if isinstance(port, int) else self.redact(str(port)),
                "reason": self.redact(reason),
                **{k: self.redact(v) if isinstance(v, str) else v for k, v in extra.items()},
            }
        )
        if action == "allow":
            self.allowed_log.add(record)
        else:
            self.denial_log.add(record)

    def check_destination(self, host: str, port: int) -> str | None:
        """None when host:port may be reached, else why not."""
        if not host:
            return "no destination host"
        try:
            ipaddress.ip_address(host.strip("[]"))
            return "IP literals are refused; use a host name from the allow-list"
        except ValueError:
            pass
        if host != host.lower():
            return "upper-case letters in the host name are refused; write it in lower case"
        if host.endswith("."):
            return "a trailing dot in the host name is refused"
        if not NAME_RE.match(host) or host.rsplit(".", 1)[-1].isdigit():
            return "not a plain DNS host name"
        for rule in self.allow:
            if matches(rule["pattern"], host):
                if port in rule["ports"]:
                    return None
                return f"port {port} is not allowed for {rule['pattern']} (allowed: {rule['ports']})"
        return "host is not in the allow-list"

    def passthrough_host(self, host: str) -> bool:
        return any(matches(p, host) for p in self.passthrough)

    def leaked_credentials(self, host: str, blobs: list[bytes]) -> list[str]:
        """Names of forwarded credentials found in blobs that may not go to host."""
        found = []
        for cred in self.credentials:
            if any(matches(p, host) for p in cred["hosts"]):
                continue
            prefix = cred["prefix"].encode()
            length = int(cred["length"])
            for blob in blobs:
                if self._contains(blob, prefix, length, cred["sha256"]):
                    found.append(cred["name"])
                    break
        return found

    def redact(self, text: str) -> str:
        """Replace each forwarded credential's value found in text (by prefix, length and hash) with its name."""
        text = self.substitutor.redact(text)
        for cred in self.credentials:
            prefix, length = cred["prefix"], int(cred["length"])
            start = text.find(prefix)
            while start != -1:
                piece = text[start : start + length]
                if hashlib.sha256(piece.encode()).hexdigest() == cred["sha256"]:
                    text = text[:start] + f"[credential {cred['name']}]" + text[start + length :]
                start = text.find(prefix, start + 1)
        return text

    @staticmethod
    def _contains(blob: bytes, prefix: bytes, length: int, digest: str) -> bool:
        start = blob.find(prefix)
        while start != -1:
            if hashlib.sha256(blob[start : start + length]).hexdigest() == digest:
                return True
            start = blob.find(prefix, start + 1)
        return False

    # -- mitmproxy hooks -------------------------------------------------------------

    def running(self) -> None:
        # The proxy listens: hand out the CA certificate (never the key) through the log.
        with open(os.path.join(os.environ.get("HOME", "/run/egress-conf"), "mitmproxy-ca-cert.pem"), "rb") as f:
            print("EGRESS-CA " + base64.b64encode(f.read()).decode(), flush=True)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        why = self.check_destination(req.host, req.port)
        if why is None:
            # The CONNECT goes no further than this proxy, but its target name goes to DNS.
            leaked = self.leaked_credentials("", request_blobs(req))
            if leaked:
                why = f"the CONNECT carries credential(s) {', '.join(leaked)}"
        if why is None:
            why = self.substitutor.check_connect(req.host)
        if why is not None:
            self.log("deny", "CONNECT", req.host, req.port, why)
            flow.response = http.Response.make(403, f"bottle egress: {why}\n".encode())
            return
        self.tunnels[flow.client_conn.id] = req.host
        mode = "passthrough" if self.passthrough_host(req.host) else "intercept"
        self.log("allow", "CONNECT", req.host, req.port, "allow-list", tls=mode)

    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if req.method == "CONNECT":
            return
        kind = "HTTPS" if req.scheme == "https" else "HTTP"
        # In a tunnel the destination is the CONNECT's name (the address was pinned to an IP).
        host = self.tunnels.get(flow.client_conn.id) or req.host
        why = self.check_destination(host, req.port)
        if why is None:
            header = req.host_header
            if header is not None:
                named = header.rsplit(":", 1)[0] if not header.endswith("]") else header
                if named != host:
                    why = f"the Host header names {named!r}, not the destination {host!r}"
        if why is None:
            leaked = self.leaked_credentials(host, request_blobs(req))
            if leaked:
                why = f"request carries credential(s) {', '.join(leaked)} that may not be sent to this host"
        if why is None:
            why = self.substitutor.check(req, host)
        if why is not None:
            self.log("deny", kind, host, req.port, why, method=req.method, path=req.path)
            flow.response = http.Response.make(403, f"bottle egress: {why}\n".encode())
            return
        substituted = self.substitutor.apply(req, host)
        reason = "allow-list" + (f"; real value of {', '.join(substituted)} put in" if substituted else "")
        self.log("allow", kind, host, req.port, reason, method=req.method, path=req.path)

    def response(self, flow: http.HTTPFlow) -> None:
        self.substitutor.scrub_response(flow.response)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is None:
            return
        host, port = data.server.address
        if (str(host), int(port)) in self.pinned:
            return  # an address this hook already checked and pinned
        why = self.check_destination(str(host), int(port))
        if why is None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                why = f"cannot resolve: {e}"
                infos = []
            addresses = [str(info[4][0]) for info in infos]
            for addr in addresses:
                refused = self.addresses.refusal(addr, int(port))
                if refused is not None:
                    why = f"{host} resolves to {addr}, an address bottles may not reach: {refused}"
                    break
            if why is None and addresses:
                # Connect to the address that was checked; keep the name for TLS.
                if data.server.sni is None:
                    data.server.sni = str(host)
                data.server.address = (addresses[0], int(port))
                self.pinned[(addresses[0], int(port))] = str(host)
        if why is not None:
            self.log("deny", "connect", host, port, why)
            data.server.error = f"bottle egress: {why}"

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        host = self.tunnels.get(data.context.client.id, "")
        if host and self.passthrough_host(host):
            data.ignore_connection = True

    def tcp_start(self, flow) -> None:  # type: ignore[no-untyped-def]
        host = self.tunnels.get(flow.client_conn.id, "")
        if host and self.passthrough_host(host):
            return
        address = flow.server_conn.address
        self.log("deny", "tunnel", host, address[1] if address else "?", "raw bytes in a tunnel are refused")
        flow.kill()

    def tcp_message(self, flow) -> None:  # type: ignore[no-untyped-def]
        # Killing the flow in tcp_start does not stop its first message: empty every message
        # of a refused tunnel before mitmproxy forwards it.
        host = self.tunnels.get(flow.client_conn.id, "")
        if host and self.passthrough_host(host):
            return
        flow.messages[-1].content = b""
        flow.kill()

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        # After the upgrade, the bottle's messages go to the same host: scanned like requests.
        ws = flow.websocket
        if ws is None or not ws.messages or not ws.messages[-1].from_client:
            return
        host = self.tunnels.get(flow.client_conn.id) or flow.request.host
        leaked = self.leaked_credentials(host, [ws.messages[-1].content])
        if leaked:
            self.log(
                "deny", "WebSocket", host, flow.request.port, f"a message carries credential(s) {', '.join(leaked)}"
            )
            ws.messages[-1].drop()
            flow.kill()

    def client_disconnected(self, client) -> None:  # type: ignore[no-untyped-def]
        self.tunnels.pop(client.id, None)


def request_blobs(req: http.Request) -> list[bytes]:
    """Every part of a request a credential could ride in, as bytes, for the scan."""
    # The raw fields as they will be sent (mitmproxy's `method` is upper-cased, the wire keeps the case);
    # for HTTP/2 these are the pseudo-headers :method, :scheme, :authority and :path.
    data = req.data
    blobs = [bytes(b) for b in (data.method, data.scheme, data.authority, data.host.encode(), data.path) if b]
    blobs.append(bytes(data.http_version))
    parts = [req.url, urllib.parse.unquote(req.url), urllib.parse.unquote_plus(req.path)]
    blobs += [p.encode(errors="replace") for p in parts if p]
    for headers in (req.headers, req.trailers):
        if headers is None:
            continue
        for name, value in headers.fields:  # raw bytes: names and values as sent, repeated ones too
            blobs += [bytes(name), bytes(value), bytes(name) + b": " + bytes(value)]
    blobs.append(bytes(req.raw_content or b""))
    decoded = req.get_content(strict=False)
    if decoded:
        blobs.append(decoded)
    return blobs


addons = [EgressPolicy()]
