"""Bottle output becomes text that cannot drive a terminal or confuse a model."""

from __future__ import annotations

import pytest

from bottle_mcp.output import safe_text


def test_plain_text_with_tabs_and_newlines_is_unchanged() -> None:
    assert safe_text("héllo\tworld\r\nline ✓\n".encode()) == ("héllo\tworld\r\nline ✓\n", [])


def test_empty_output_is_empty_text() -> None:
    assert safe_text(b"") == ("", [])


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"a\x00b", "a\\x00b"),
        (b"\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        (b"\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        (b"bell\x07 back\x08 ff\x0c vt\x0b", "bell\\x07 back\\x08 ff\\x0c vt\\x0b"),
        (b"del\x7f", "del\\x7f"),
        ("c1 csi \u009b31m".encode(), "c1 csi \\x9b31m"),
    ],
    ids=["nul", "csi-colour", "osc-title", "c0", "del", "c1-csi"],
)
def test_control_characters_are_shown_as_hex_and_noted(raw: bytes, shown: str) -> None:
    text, notes = safe_text(raw)
    assert text == shown
    assert len(notes) == 1
    assert "control characters" in notes[0]
    assert "\x1b" not in text and "\x00" not in text and "\x9b" not in text


def test_the_note_counts_the_control_characters() -> None:
    _text, notes = safe_text(b"\x1b[1m\x1b[0m\x00")
    assert notes == ["3 control characters (NUL, escape, ...) are shown as \\xNN"]


def test_invalid_utf8_is_replaced_and_noted() -> None:
    text, notes = safe_text(b"ok \xff\xfe end")
    assert text == "ok \ufffd\ufffd end"
    assert notes == ["invalid UTF-8 bytes were replaced with U+FFFD"]


def test_a_genuine_replacement_character_is_not_reported_as_invalid_utf8() -> None:
    assert safe_text("a \ufffd b".encode()) == ("a \ufffd b", [])


def test_binary_output_gives_both_notes_and_no_raw_controls() -> None:
    text, notes = safe_text(bytes(range(256)))
    assert len(notes) == 2
    assert all(ch in "\t\n\r" or ch.isprintable() or ch == "\ufffd" for ch in text)


def test_invalid_utf8_is_noted_even_next_to_a_genuine_replacement_character() -> None:
    _text, notes = safe_text("\ufffd".encode() + b"\xff")
    assert "invalid UTF-8 bytes were replaced with U+FFFD" in notes
