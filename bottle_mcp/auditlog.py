"""Audit records that come from a bottle's doing: clipped field by field, and paged to the output cap.

Host names, paths, reasons and ref names in the egress and gate logs are chosen by the bottle. Each text
field is cut to MAX_FIELD characters (its original length is kept in `lengths`), each list to MAX_ITEMS,
and a result holds as many records as fit in the output cap, with a cursor for the rest.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

MAX_FIELD = 200
MAX_ITEMS = 20
RECORD_OVERHEAD = 512  # the result's own fields besides its records

M = TypeVar("M", bound=BaseModel)


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


def page(items: list[M], *, cursor: int | None, limit: int, cap: int) -> tuple[list[M], int, int | None]:
    """A window of `items` (oldest first) of at most `limit` records and `cap` bytes of JSON.

    With a cursor, the window starts there and goes forward; without, it is the latest records that fit.
    Returns (records, index of the first, cursor for the records after the window or None).
    """
    budget = max(cap - RECORD_OVERHEAD, 0)
    if cursor is None:
        start = len(items)
        used = 0
        while start > 0 and len(items) - start < limit:
            size = len(items[start - 1].model_dump_json()) + 1
            if used + size > budget and start < len(items):
                break
            used += size
            start -= 1
        end = len(items)
    else:
        start = min(max(cursor, 0), len(items))
        end = start
        used = 0
        while end < len(items) and end - start < limit:
            size = len(items[end].model_dump_json()) + 1
            if used + size > budget and end > start:
                break
            used += size
            end += 1
    return items[start:end], start, end if end < len(items) else None
