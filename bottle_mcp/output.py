"""Turning a bottle's raw output into text that is safe to hand to a model or a terminal."""

from __future__ import annotations

import re

# C0 controls except tab, newline and carriage return, plus DEL and the C1 range.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def safe_text(data: bytes) -> tuple[str, list[str]]:
    """Decode as UTF-8 (invalid bytes become U+FFFD) and show control characters as `\\xNN`.

    Terminal escape sequences therefore arrive as visible text and cannot drive the
    reader's terminal. Returns the text and notes describing what was changed.
    """
    notes: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        notes.append("invalid UTF-8 bytes were replaced with U+FFFD")
    text, n = _CONTROL.subn(lambda m: f"\\x{ord(m.group()):02x}", text)
    if n:
        notes.append(f"{n} control characters (NUL, escape, ...) are shown as \\xNN")
    return text, notes


def complete_utf8(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a multi-byte UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return len(data)
        if b >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


def trim_partial_utf8(data: bytes) -> bytes:
    """Drop a multi-byte UTF-8 character that a byte cap cut in half at the end."""
    return data[: complete_utf8(data)]
