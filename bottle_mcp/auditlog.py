"""Audit records that come from a bottle's doing: clipped field by field, and paged to the output cap.

Host names, paths, reasons and ref names in the egress and gate logs are chosen by the bottle. Each text
field is cut to MAX_FIELD characters (its original length is kept in `lengths`) and each list to MAX_ITEMS
items; results are paged by bottle_mcp.shaping, within the output cap.
"""

from __future__ import annotations

from typing import Any

MAX_FIELD = 200
MAX_ITEMS = 20


def clip_fields(record: dict[str, Any], *, max_field: int = MAX_FIELD, max_items: int = MAX_ITEMS) -> dict[str, Any]:
    """A copy with every string clipped and every list of strings shortened; original sizes in `lengths`."""
    lengths: dict[str, int] = {}
    given = record.get("lengths")
    if isinstance(given, dict):
        lengths.update({str(k): v for k, v in list(given.items())[:max_items] if isinstance(v, int)})
    out = {k: _clipped(k, v, lengths, max_field, max_items) for k, v in record.items() if k != "lengths"}
    if lengths:
        out["lengths"] = lengths
    return out


def _clipped(key: str, value: Any, lengths: dict[str, int], max_field: int, max_items: int) -> Any:
    if isinstance(value, str) and len(value) > max_field:
        lengths.setdefault(key, len(value))
        return value[:max_field] + "..."
    if isinstance(value, list):
        if len(value) > max_items:
            lengths.setdefault(key, len(value))
        return [v[:max_field] + "..." if isinstance(v, str) and len(v) > max_field else v for v in value[:max_items]]
    return value
