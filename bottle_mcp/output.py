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
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in data:
        notes.append("invalid UTF-8 bytes were replaced with U+FFFD")
    text, n = _CONTROL.subn(lambda m: f"\\x{ord(m.group()):02x}", text)
    if n:
        notes.append(f"{n} control characters (NUL, escape, ...) are shown as \\xNN")
    return text, notes
