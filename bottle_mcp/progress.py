"""A small progress bar for long CLI operations, drawn only on a terminal.

On a terminal it redraws one line on stderr; anywhere else (pipes, CI logs,
--json) it draws nothing, so output stays quiet and machine-readable. No
dependency is needed for one line of text.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TextIO


def wants_bar(stream: TextIO) -> bool:
    """A terminal that is not 'dumb' and no NO_PROGRESS in the environment."""
    return stream.isatty() and os.environ.get("TERM") != "dumb" and "NO_PROGRESS" not in os.environ


class Bar:
    """`Bar(total, label)`; `update(done, note)` / `advance(n, note)`; `close()` ends the line."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = wants_bar(self.stream) if enabled is None else enabled
        self.total = max(total, 0)
        self.label = label
        self.done = 0
        self.note = ""
        self._drawn = False

    def render(self) -> str:
        width = shutil.get_terminal_size((80, 20)).columns
        total = self.total or 1
        frac = min(max(self.done / total, 0.0), 1.0)
        count = f" {self.done}/{self.total}" if self.total else ""
        head = f"{self.label} ["
        tail = f"]{count} {self.note}"
        cells = max(10, min(30, width - len(head) - len(count) - 12))
        filled = int(frac * cells)
        line = head + "#" * filled + "." * (cells - filled) + tail
        return line[: width - 1]

    def update(self, done: int | None = None, note: str | None = None, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
        if note is not None:
            self.note = note
        if self.enabled:
            self.stream.write("\r\x1b[2K" + self.render())
            self.stream.flush()
            self._drawn = True

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.update(self.done + n, note)

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
