"""What a bottle says about a job is parsed strictly; cursors and output slices stay consistent."""

from __future__ import annotations

import base64

import pytest

from bottle_mcp.errors import BottleError
from bottle_mcp.jobs import parse_cursor, parse_poll
from bottle_mcp.output import complete_utf8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _poll_text(state: str = "running", out: bytes = b"", tail: bytes = b"") -> str:
    return f"state {state}\nsize stdout 12 0\nsize stderr 3 7\ntail {_b64(tail)}\nout {_b64(out)}\nerr {_b64(b'err')}\n"


def test_a_running_poll_is_read_with_sizes_and_output() -> None:
    poll = parse_poll(_poll_text(out=b"hello\xff", tail=b"last line\n"))
    assert (poll.state, poll.exit_code, poll.timed_out) == ("running", None, False)
    assert poll.sizes == {"stdout": (12, 0), "stderr": (3, 7)}
    assert (poll.out, poll.err, poll.tail) == (b"hello\xff", b"err", b"last line\n")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("exit 0", ("exit", 0, False)),
        ("exit 137", ("exit", 137, False)),
        ("exit killed", ("exit", None, False)),
        ("exit rmrf", ("exit", None, False)),
        ("exit 99999999", ("exit", None, False)),
        ("lost timed_out", ("lost", None, True)),
    ],
)
def test_end_states_are_recognized(state: str, expected: tuple[str, int | None, bool]) -> None:
    poll = parse_poll(_poll_text(state=state))
    assert (poll.state, poll.exit_code, poll.timed_out) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        _poll_text(state="exit 0; rm -rf /"),
        _poll_text(state="done"),
        _poll_text().replace("size stdout 12 0", "size stdout -1 0"),
        _poll_text().replace("out ", "out !!!"),
        _poll_text().replace("tail ", "tale "),
    ],
)
def test_anything_unexpected_from_the_bottle_is_an_error(text: str) -> None:
    with pytest.raises(BottleError):
        parse_poll(text)


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    assert parse_cursor(None) == (0, 0)
    assert parse_cursor("") == (0, 0)
    assert parse_cursor("120:7") == (120, 7)
    for bad in ("12", "a:b", "-1:0", "1:2:3", "1 :2"):
        with pytest.raises(BottleError, match="next_cursor"):
            parse_cursor(bad)


def test_an_output_slice_never_ends_inside_a_utf8_character() -> None:
    text = "añ€😀".encode()
    assert complete_utf8(text) == len(text)
    for cut in range(len(text) + 1):
        kept = complete_utf8(text[:cut])
        assert kept <= cut
        text[:kept].decode()  # never raises
        assert cut - kept < 4
    assert complete_utf8(b"") == 0
    assert complete_utf8(b"\x80\x80\x80\x80\x80") == 5  # garbage is passed on (and shown as U+FFFD), not held back
