"""The HTTP transport's door: a bearer token on every request, and Host and Origin checked.

`serve --http` listens on loopback only, but every local user and process can reach
loopback, and a web page can reach it too by rebinding a name of its own to 127.0.0.1.
So every request must carry `Authorization: Bearer <token>` (the token is made at start
and printed for the client's configuration, or given by the person), its Host must name
the address the server listens on (a rebound name does not), and an Origin, when a
browser sends one, must be that same address. Anything else gets a plain error before
it reaches the MCP endpoint. This is an ASGI middleware around the SDK's Starlette app.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import InvalidArgumentError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_ENV = "BOTTLE_MCP_HTTP_TOKEN"  # noqa: S105 - the name of a variable, not a token
MIN_TOKEN_LEN = 24


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_token(token: str, source: str) -> str:
    """A token the person gave: long enough and printable, or an InvalidArgumentError saying how to fix it."""
    if len(token) < MIN_TOKEN_LEN or not token.isascii() or not token.isprintable() or " " in token:
        raise InvalidArgumentError(
            f"the HTTP token from {source} must be at least {MIN_TOKEN_LEN} printable ASCII characters without "
            "spaces; leave it unset and the server makes one, or use `python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`"
        )
    return token


def local_names(host: str, port: int) -> tuple[list[str], list[str]]:
    """The Host values and Origins that name this server (loopback only)."""
    names = ["127.0.0.1", "localhost", "[::1]"] if host in ("127.0.0.1", "::1") else [host]
    if host == "::1":
        names = ["[::1]", "localhost"]
    hosts = [f"{n}:{port}" for n in names]
    origins = [f"http://{h}" for h in hosts]
    return hosts, origins


class HttpGuard:
    """Refuse a request unless its Host and Origin name this server and it carries the bearer token."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: list[str], origins: list[str]) -> None:
        self.app = app
        self._token = token.encode()
        self._hosts = {h.lower() for h in hosts}
        self._origins = {o.lower() for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(bytes(name).lower(), []).append(bytes(value))
        refusal = self._refusal(headers)
        if refusal is not None:
            status, text, extra = refusal
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = (text + "\n").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[bytes, list[bytes]]) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        host = headers.get(b"host", [])
        if len(host) != 1 or host[0].decode("latin-1").lower() not in self._hosts:
            return 421, "this server answers only to its own loopback address in the Host header", []
        origin = headers.get(b"origin", [])
        if len(origin) > 1 or (origin and origin[0].decode("latin-1").lower() not in self._origins):
            return 403, "requests from other origins (web pages) are refused", []
        auth = headers.get(b"authorization", [])
        scheme, _, given = (auth[0] if len(auth) == 1 else b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            challenge = [(b"www-authenticate", b'Bearer realm="bottle-mcp"')]
            return 401, "missing or wrong bearer token (Authorization: Bearer <token>, printed at start)", challenge
        return None
