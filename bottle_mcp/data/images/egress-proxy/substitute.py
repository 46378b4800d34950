"""Stand-ins in, real values out: the proxy's half of keeping credentials outside the bottle.

Runs inside the egress sidecar, imported by egress_addon.py (Debian's python3 and
mitmproxy only). The server hands the proxy, over an exec's stdin, a JSON list
written to the sidecar's tmpfs before the proxy starts:

    [{"name": "API_KEY", "stand_in": "sk-...", "value": "sk-...",
      "hosts": ["api.example.com", "*.example.org"], "body": false}]

This module reads it once, deletes the file and keeps the values in memory. For each
request the addon has allowed:

- to a host declared for a credential, the stand-in is replaced by the real value in
  header values (also inside `Authorization: Basic`, where it is base64-encoded) and,
  when the manifest says `body = true`, in the body;
- a stand-in anywhere it is not replaced (another host, the method, the URL, a header
  name, a body without `body = true`, trailers) refuses the request;
- a real value coming from the bottle refuses the request (the bottle never holds one).

Responses are scrubbed the other way: a real value in a response's headers or body is
replaced by the stand-in, so a host that echoes what it was sent does not hand the
bottle the real value. Nothing here ever prints a value: refusals name credentials.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import urllib.parse

CREDENTIALS_FILE = os.path.join(os.environ.get("HOME", "/run/egress-conf"), "credentials.json")
AUTH_HEADERS = (b"authorization", b"proxy-authorization")


def _matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class Credential:
    __slots__ = ("body", "hosts", "name", "stand_in", "value")

    def __init__(self, entry: dict) -> None:
        self.name = str(entry["name"])
        self.stand_in = str(entry["stand_in"]).encode()
        self.value = str(entry["value"]).encode()
        self.hosts = [str(h) for h in entry.get("hosts", [])]
        self.body = bool(entry.get("body", False))
        if len(self.stand_in) < 16 or self.value in self.stand_in or self.stand_in in self.value:
            raise ValueError(f"credential {self.name}: unusable stand-in")

    def declared_for(self, host: str) -> bool:
        return any(_matches(p, host) for p in self.hosts)


def _basic(value: bytes) -> bytes | None:
    """The decoded credentials of a `Basic` authorization value, or None."""
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not rest.strip():
        return None
    try:
        return base64.b64decode(rest.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class Substitutor:
    def __init__(self, path: str = CREDENTIALS_FILE) -> None:
        self.credentials: list[Credential] = []
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
        except FileNotFoundError:
            return
        finally:
            # Read once: afterwards the values live only in this process's memory.
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.credentials = [Credential(e) for e in entries]

    # -- requests ----------------------------------------------------------------------

    @staticmethod
    def _body_views(message) -> list[bytes]:  # type: ignore[no-untyped-def]
        views = [bytes(message.raw_content or b"")]
        decoded = message.get_content(strict=False)
        if decoded and decoded != views[0]:
            views.append(decoded)
        return views

    def _places(self, request) -> list[tuple[str, bytes, str]]:  # type: ignore[no-untyped-def]
        """(where, bytes, kind) of every part of a request; kind says what may be substituted there."""
        # The raw method and path, as the bottle sent them (`request.method` is upper-cased).
        places = [
            ("the method", bytes(request.data.method or b""), "never"),
            ("the URL", request.url.encode(errors="replace"), "never"),
            ("the URL", urllib.parse.unquote_plus(request.url).encode(errors="replace"), "never"),
            ("the URL", bytes(request.data.path or b""), "never"),
            ("the URL", bytes(request.data.authority or b""), "never"),
        ]
        for name, value in request.headers.fields:
            places.append(("a header name", bytes(name), "never"))
            places.append((f"header {name.decode(errors='replace')}", bytes(value), "header"))
            if name.lower() in AUTH_HEADERS:
                decoded = _basic(bytes(value))
                if decoded is not None:
                    places.append((f"header {name.decode(errors='replace')} (Basic)", decoded, "header"))
        places += [("the body", view, "body") for view in self._body_views(request)]
        trailers = getattr(request, "trailers", None)
        if trailers:
            for name, value in trailers.fields:
                places.append(("a trailer", bytes(name) + b": " + bytes(value), "never"))
        return places

    def check(self, request, host: str) -> str | None:  # type: ignore[no-untyped-def]
        """Why this request may not go to `host` as it is, or None (call before `apply`)."""
        if not self.credentials:
            return None
        places = self._places(request)
        problems: list[str] = []
        for cred in self.credentials:
            declared = cred.declared_for(host)
            allowed = {"header", "body"} if cred.body else {"header"}
            for where, data, kind in places:
                if cred.value in data:
                    problems.append(
                        f"{where} carries the real value of credential {cred.name}, which the bottle never holds"
                    )
                    break
                if cred.stand_in in data and not (declared and kind in allowed):
                    if not declared:
                        problems.append(f"request carries credential(s) {cred.name} that may not be sent to this host")
                    else:
                        problems.append(
                            f"credential {cred.name} is in {where}, where the proxy does not put its real value"
                            + (" (body = true in the manifest allows bodies)" if kind == "body" else "")
                        )
                    break
        return "; ".join(problems) if problems else None

    def redact(self, text: str) -> str:
        """Text for the log: every stand-in and real value replaced by the credential's name."""
        for cred in self.credentials:
            for secret in (cred.value, cred.stand_in):
                text = text.replace(secret.decode(errors="replace"), f"[credential {cred.name}]")
        return text

    def check_connect(self, target: str) -> str | None:
        """Why a CONNECT to `target` is refused: its name carries a stand-in or a real value (it would go to DNS)."""
        name = target.encode(errors="replace")
        found = [c.name for c in self.credentials if c.stand_in in name or c.value in name]
        return f"the CONNECT carries credential(s) {', '.join(found)}" if found else None

    def apply(self, request, host: str) -> list[str]:  # type: ignore[no-untyped-def]
        """Put the real values in place of the stand-ins for `host`; return the names substituted."""
        used: list[str] = []
        creds = [c for c in self.credentials if c.declared_for(host)]
        if not creds:
            return used
        fields = []
        for name, value in request.headers.fields:
            new = bytes(value)
            for cred in creds:
                if cred.stand_in in new:
                    new = new.replace(cred.stand_in, cred.value)
                    used.append(cred.name)
            if name.lower() in AUTH_HEADERS:
                decoded = _basic(new)
                if decoded is not None and any(c.stand_in in decoded for c in creds):
                    for cred in creds:
                        if cred.stand_in in decoded:
                            decoded = decoded.replace(cred.stand_in, cred.value)
                            used.append(cred.name)
                    scheme = new.strip().partition(b" ")[0]
                    new = scheme + b" " + base64.b64encode(decoded)
            fields.append((bytes(name), new))
        request.headers.fields = tuple(fields)
        body_creds = [c for c in creds if c.body]
        if body_creds and request.raw_content:
            self._replace_body(request, [(c.stand_in, c.value) for c in body_creds], used, [c.name for c in body_creds])
        return sorted(set(used))

    @staticmethod
    def _replace_body(message, pairs: list[tuple[bytes, bytes]], used: list[str], names: list[str]) -> None:  # type: ignore[no-untyped-def]
        raw = bytes(message.raw_content or b"")
        try:
            content = message.get_content(strict=True)
        except ValueError:
            content = None
        if content is not None and content != raw:
            new = content
            for (old, value), name in zip(pairs, names, strict=True):
                if old in new:
                    new = new.replace(old, value)
                    used.append(name)
            if new != content:
                message.content = new  # re-encoded, Content-Length updated
            return
        new = raw
        for (old, value), name in zip(pairs, names, strict=True):
            if old in new:
                new = new.replace(old, value)
                used.append(name)
        if new != raw:
            message.raw_content = new
            if "content-length" in message.headers:
                message.headers["content-length"] = str(len(new))

    # -- responses -----------------------------------------------------------------------

    def scrub_response(self, response) -> None:  # type: ignore[no-untyped-def]
        """Replace any real value in a response by its stand-in, before the bottle sees it."""
        if not self.credentials or response is None:
            return
        pairs = [(c.value, c.stand_in) for c in self.credentials]
        fields = []
        changed = False
        for name, value in response.headers.fields:
            new = bytes(value)
            for real, stand_in in pairs:
                if real in new:
                    new = new.replace(real, stand_in)
                    changed = True
            fields.append((bytes(name), new))
        if changed:
            response.headers.fields = tuple(fields)
        raw = bytes(response.raw_content or b"")
        encoded = "content-encoding" in response.headers
        if not raw or (not encoded and not any(real in raw for real, _ in pairs)):
            return
        self._replace_body(response, pairs, [], [c.name for c in self.credentials])
