"""The last guard on the way out: credential values never leave the server in a tool result.

Credentials the manifest forwards into bottles are meant for the agent there. An agent (or a
command) can print them, and they would come back in output, in parsed results, in error text
or in progress messages. Every tool result and tool error passes through `Redactor.scrub`, which
replaces each forwarded credential's value with a marker naming the credential.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import ValidationError

from .argerrors import describe

LifespanResultT = TypeVar("LifespanResultT")

# Values shorter than this are too likely to occur by chance to be replaced everywhere.
MIN_SECRET_LEN = 6


class Redactor:
    """Replaces the values of named environment variables in text and in JSON-like data."""

    def __init__(self, names: Callable[[], Iterable[str]], environ: Callable[[], dict[str, str]] | None = None) -> None:
        self._names = names
        self._environ = environ or (lambda: dict(os.environ))

    def secrets(self) -> list[tuple[str, str]]:
        env = self._environ()
        found = {(env[n], n) for n in set(self._names()) if len(env.get(n, "")) >= MIN_SECRET_LEN}
        return sorted(found, key=lambda vn: -len(vn[0]))

    def text(self, text: str) -> str:
        for value, name in self.secrets():
            text = text.replace(value, f"[redacted {name}]")
        return text

    def data(self, obj: Any) -> Any:
        secrets = self.secrets()
        return _walk(obj, secrets) if secrets else obj


def _walk(obj: Any, secrets: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for value, name in secrets:
            obj = obj.replace(value, f"[redacted {name}]")
        return obj
    if isinstance(obj, dict):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, secrets) for v in obj]
    return obj


class RedactingServer(MCPServer[LifespanResultT]):
    """An MCPServer whose every tool result and tool error is scrubbed of credential values."""

    def __init__(self, *args: Any, redactor: Redactor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redactor = redactor

    def redact(self, text: str) -> str:
        """`text` with every forwarded credential's value replaced by a marker."""
        return self._redactor.text(text)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[LifespanResultT, Any] | None = None
    ) -> Any:
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as e:
            if isinstance(e.__cause__, ValidationError):  # bad arguments: say so in sentences
                e.args = (describe(name, e.__cause__, self._tool_input_schema(name)),)
            e.args = tuple(self._redactor.text(a) if isinstance(a, str) else a for a in e.args)
            raise
        if isinstance(result, CallToolResult) and self._redactor.secrets():
            dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
            return CallToolResult.model_validate(self._redactor.data(dumped))
        return result
