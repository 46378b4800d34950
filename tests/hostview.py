"""What an agent host passes to its model of a tool result, and the checks every result must pass.

Claude Code hands the model a result's structured content as compact JSON and keeps it whole
only while it is small; the text block carries the same JSON. Both must stay under
RESULT_CHAR_LIMIT characters, and the status fields must sit in the first STATUS_WINDOW
characters, so that even a preview of a result shows the facts.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.types import CallToolResult, TextContent

from bottle_mcp.shaping import RESULT_CHAR_LIMIT

STATUS_WINDOW = 2000


def compact(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def check_result(result: CallToolResult, status_keys: list[str], what: str) -> dict[str, Any]:
    """Assert the size and status-first rules; return the structured content."""
    assert not result.is_error, f"{what}: {result.content}"
    data: dict[str, Any] | None = result.structured_content
    assert data is not None, what
    shown = compact(data)
    text = "".join(c.text for c in result.content if isinstance(c, TextContent))
    assert len(shown) < RESULT_CHAR_LIMIT, f"{what}: structured content is {len(shown)} characters"
    assert len(text) < RESULT_CHAR_LIMIT, f"{what}: text content is {len(text)} characters"
    for key in status_keys:
        at = shown.find(f'"{key}":')
        assert 0 <= at < STATUS_WINDOW, f"{what}: {key!r} is at {at} of {len(shown)}, not in the first {STATUS_WINDOW}"
    return data
