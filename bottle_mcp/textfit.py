"""Text cut to fit a budget of characters, as a host counts them in a JSON result.

A cut keeps the head and the tail and says, in the text, what was cut: the end of a log
(the error) matters as much as its start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def json_chars(text: str) -> int:
    """Characters `text` takes inside a JSON string (what the host counts), without the quotes."""
    return len(json.dumps(text, ensure_ascii=False)) - 2


def _take_head(text: str, budget: int) -> str:
    """The longest prefix of `text` that takes at most `budget` JSON characters."""
    if json_chars(text) <= budget:
        return text
    lo, hi = 0, min(len(text), budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if json_chars(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _take_tail(text: str, budget: int) -> str:
    return _take_head(text[::-1], budget)[::-1]


def fit(head: str, tail: str, marker: str, budget: int) -> str:
    """head + marker + tail in at most `budget` JSON characters, trimming head and tail evenly."""
    room = max(0, budget - json_chars(marker))
    h = _take_head(head, room // 2 if json_chars(tail) > room // 2 else room - json_chars(tail))
    t = _take_tail(tail, room - json_chars(h))
    return h + marker + t


def clip(text: str, budget: int, what: str = "text") -> str:
    """`text`, or its head and tail with the middle marked as cut, in at most `budget` JSON characters."""
    if json_chars(text) <= budget:
        return text
    marker = f"\n[... {what} cut here: {len(text):,} characters in all ...]\n"
    return fit(text, text, marker, budget)


def clip_list(items: Sequence[str], budget: int, what: str) -> tuple[list[str], int]:
    """As many whole items as fit in `budget` characters; returns them and how many were left out."""
    out: list[str] = []
    used = 0
    for item in items:
        cost = json_chars(item) + 3
        if used + cost > budget:
            break
        out.append(item)
        used += cost
    left = len(items) - len(out)
    if left:
        out.append(f"[... and {left} more {what}]")
    return out, left
