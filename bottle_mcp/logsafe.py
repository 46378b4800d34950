"""The server's log never carries a bottle's words raw: redacted, clipped and escaped.

Text from a bottle (a supervisor's stderr, an engine message quoting a path, an
exception that holds a command's output) can reach a log line. `bottle_text`
makes one such piece printable on a single line; `LogGuard` is a logging filter
installed on the server's handlers that does the same to every record, and
replaces the values of forwarded credentials with a marker (`redact.Redactor`).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable

MESSAGE_LIMIT = 2000
# A bottle's text is clipped before it is logged, and a clip can cut a credential: a piece of one at
# least this long, at the start or the end of anything, is redacted too.
MIN_FRAGMENT = 8
TRACEBACK_LIMIT = 8000
# Every C0 control (newline and tab too: a log record is one line), DEL, the C1 range,
# and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f\x80-\x9f\u2028\u2029]")
# Tracebacks keep their line breaks, nothing else.
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f\x80-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def bottle_text(data: bytes | str, limit: int = 400) -> str:
    """One piece of a bottle's text for a log line: decoded, control characters shown as escapes, clipped."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return _clip(_CONTROL.sub(_escape, text), limit)


def redact(text: str, secrets: list[tuple[str, str]]) -> str:
    """Replace each secret value (value, name) with a marker; then any long prefix or suffix of one."""
    for value, name in secrets:
        text = text.replace(value, f"[redacted {name}]")
    for value, name in secrets:
        for size in range(len(value) - 1, MIN_FRAGMENT - 1, -1):
            for piece in {value[:size], value[-size:]}:
                if piece in text:
                    text = text.replace(piece, f"[redacted part of {name}]")
    return text


class LogGuard(logging.Filter):
    """Redact credential values, escape control characters and clip every record (message and traceback)."""

    def __init__(self, secrets: Callable[[], list[tuple[str, str]]]) -> None:
        super().__init__()
        self._secrets = secrets

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format is still logged
            message = f"{record.msg!r} {record.args!r}"
        message = _clip(_CONTROL.sub(_escape, self._redact(message)), MESSAGE_LIMIT)
        if record.exc_info and record.exc_info[0] is not None:
            tb = "".join(traceback.format_exception(*record.exc_info))
            tb = _clip(_CONTROL_BUT_NEWLINE.sub(_escape, self._redact(tb)), TRACEBACK_LIMIT)
            message = f"{message}\n{tb.rstrip()}"
            record.exc_info = None
            record.exc_text = None
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        record.msg = message
        record.args = None
        return True


def guard_logging(secrets: Callable[[], list[tuple[str, str]]], logger: logging.Logger | None = None) -> LogGuard:
    """Install a LogGuard on every handler of `logger` (the root logger by default).

    `secrets()` gives the (value, name) pairs to redact, as `redact.Redactor.secrets` does.
    """
    guard = LogGuard(secrets)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(guard)
    return guard
