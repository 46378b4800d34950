"""The server's side of the exec channel trusts nothing the bottle sends: every surprise ends the channel."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bottle_mcp.backends.docker.channel import (
    DIAG_LIMIT,
    DOCKER_HEADER,
    HEADER,
    JUNK_LIMIT,
    MAX_PAYLOAD,
    T_CREDIT,
    T_EXIT,
    T_HELLO,
    T_STARTED,
    T_STDERR,
    T_STDOUT,
    TAG,
    Channel,
    _Request,
)
from bottle_mcp.backends.docker.engine import Engine

KEY = b"k" * 32


def frame(kind: int, rid: int, payload: bytes | dict[str, object] = b"") -> bytes:
    """One frame without its seal; `sealed` adds the tags in order."""
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return HEADER.pack(kind, rid, len(data)) + data


def sealed(*frames: bytes, start: int = 0) -> bytes:
    """Frames as the real supervisor sends them: each followed by its HMAC tag over direction and sequence."""
    out = b""
    for seq, f in enumerate(frames, start):
        out += f + hmac.new(KEY, b"S" + seq.to_bytes(8, "big") + f, hashlib.sha256).digest()[:TAG]
    return out


def engine_stream(data: bytes, stream: int = 1) -> bytes:
    return DOCKER_HEADER.pack(stream, len(data)) + data


HELLO = frame(T_HELLO, 0, {"v": 1, "pid": 7, "sealed": True})


def channel(cap: int = 8) -> tuple[Channel, _Request]:
    ch = Channel(Engine(), "c", "b-test", "1000")
    ch._key = KEY
    req = _Request(rid=1, cap=cap)
    ch._pending[1] = req
    ch._next_id = 2
    return ch, req


def feed(ch: Channel, data: bytes, cuts: list[int] | None = None) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts or []})
    start = 0
    for p in [*points, len(data)]:
        if p > start:
            ch._feed(data[start:p])
            start = p


@given(st.lists(st.integers(min_value=0), max_size=12), st.binary(max_size=64))
def test_frames_split_anywhere_give_the_same_outcome_and_caps_hold(cuts: list[int], out: bytes) -> None:
    ch, req = channel(cap=8)
    wire = engine_stream(sealed(HELLO, frame(T_STARTED, 1, {"pid": 42}), frame(T_STDOUT, 1, out or b"-")))
    wire += engine_stream(b"a traceback the supervisor printed", stream=2)
    wire += engine_stream(
        sealed(frame(T_STDERR, 1, b"err"), frame(T_EXIT, 1, {"code": 3, "out": 10**6, "err": 3}), start=3)
    )
    feed(ch, wire, cuts)
    assert ch.alive
    assert req.done.is_set() and req.outcome.exit_code == 3 and req.outcome.pid == 42
    assert bytes(req.outcome.stdout) == (out or b"-")[:8]
    assert req.outcome.stdout_bytes == 10**6  # what the bottle says it dropped past the cap
    assert bytes(req.outcome.stderr) == b"err"


def test_an_oversized_frame_ends_the_channel_before_it_is_buffered() -> None:
    ch, req = channel()
    feed(ch, engine_stream(sealed(HELLO) + HEADER.pack(T_STDOUT, 1, MAX_PAYLOAD + 1)))
    assert not ch.alive and "exceeds" in (ch.dead or "")
    assert req.done.is_set() and req.broken


def test_surprises_end_the_channel_with_a_reason() -> None:
    deep = b"[" * 2040 + b"]" * 2040
    cases = {
        "before the hello": sealed(frame(T_STDOUT, 1, b"x")),
        "protocol": sealed(frame(T_HELLO, 0, {"v": 99, "sealed": True})),
        "non-dumpable": sealed(frame(T_HELLO, 0, {"v": 1, "pid": 7})),
        "a second hello": sealed(HELLO, HELLO),
        "never sent": sealed(HELLO, frame(T_STDOUT, 9, b"x")),
        "bad pid": sealed(HELLO, frame(T_STARTED, 1, {"pid": -5})),
        "a second start": sealed(HELLO, frame(T_STARTED, 1, {"pid": 5}), frame(T_STARTED, 1, {"pid": 5})),
        "bad exit code": sealed(HELLO, frame(T_EXIT, 1, {"code": "zero"})),
        "not JSON": sealed(HELLO, frame(T_STARTED, 1, b"{nope")),
        "not JSON ": sealed(HELLO, frame(T_STARTED, 1, deep)),  # nested past the parser's recursion limit
        "more input than it was sent": sealed(HELLO, frame(T_CREDIT, 1, (5).to_bytes(4, "big"))),
        "unknown frame type": sealed(HELLO, frame(99, 1, b"")),
        "seal": sealed(HELLO) + frame(T_STDOUT, 1, b"forged") + b"\0" * TAG,  # written by something else
        "seal ": sealed(HELLO, frame(T_EXIT, 1, {"code": 0}), start=1),  # a frame taken out of the channel
    }
    for reason, wire in cases.items():
        ch, req = channel()
        feed(ch, engine_stream(wire))
        assert not ch.alive, reason
        assert reason.strip() in (ch.dead or ""), (reason, ch.dead)
        assert req.done.is_set() and req.broken


def test_late_output_of_a_finished_request_is_ignored_then_counted_and_a_flood_ends_the_channel() -> None:
    ch, req = channel()
    feed(ch, engine_stream(sealed(HELLO, frame(T_EXIT, 1, {"code": 0}), frame(T_STDOUT, 1, b"late"))))
    assert ch.alive and req.outcome.exit_code == 0 and bytes(req.outcome.stdout) == b""
    flood = [frame(T_STDOUT, 1, b"x")] * JUNK_LIMIT
    feed(ch, engine_stream(sealed(*flood, start=3)))
    assert not ch.alive and "served no request" in (ch.dead or "")


def test_output_past_the_cap_empty_frames_and_zero_credits_count_as_waste() -> None:
    for waste in (frame(T_STDOUT, 1, b"12345678"), frame(T_STDERR, 1, b""), frame(T_CREDIT, 1, bytes(4))):
        ch, req = channel(cap=8)
        frames = [HELLO, frame(T_STARTED, 1, {"pid": 3}), frame(T_STDOUT, 1, b"12345678")]
        feed(ch, engine_stream(sealed(*frames, *[waste] * (JUNK_LIMIT + 1))))
        assert not ch.alive and "served no request" in (ch.dead or ""), waste
        assert bytes(req.outcome.stdout) == b"12345678"


def test_a_chatty_supervisor_stderr_ends_the_channel() -> None:
    ch, _ = channel()
    feed(ch, engine_stream(sealed(HELLO)) + engine_stream(b"e" * (DIAG_LIMIT + 1), stream=2))
    assert not ch.alive and "stderr" in (ch.dead or "")
    assert len(ch._diag) <= 4096


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_any_bytes_at_all_never_raise_and_never_grow_buffers_past_their_bounds(junk: bytes) -> None:
    ch, _ = channel()
    feed(ch, engine_stream(sealed(HELLO)) + junk)
    assert len(ch._buf) <= HEADER.size + MAX_PAYLOAD
    assert len(ch._diag) <= 4096
