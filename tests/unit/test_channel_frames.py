"""The server's side of the exec channel trusts nothing the bottle sends: every surprise ends the channel."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bottle_mcp.backends.docker.channel import (
    DOCKER_HEADER,
    HEADER,
    MAX_PAYLOAD,
    T_CREDIT,
    T_EXIT,
    T_HELLO,
    T_STARTED,
    T_STDERR,
    T_STDOUT,
    Channel,
    _Request,
)
from bottle_mcp.backends.docker.engine import Engine


def frame(kind: int, rid: int, payload: bytes | dict[str, object] = b"") -> bytes:
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return HEADER.pack(kind, rid, len(data)) + data


def engine_stream(data: bytes, stream: int = 1) -> bytes:
    return DOCKER_HEADER.pack(stream, len(data)) + data


HELLO = frame(T_HELLO, 0, {"v": 1, "pid": 7})


def channel(cap: int = 8) -> tuple[Channel, _Request]:
    ch = Channel(Engine(), "c", "b-test", "1000")
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
    wire = engine_stream(HELLO + frame(T_STARTED, 1, {"pid": 42}) + frame(T_STDOUT, 1, out))
    wire += engine_stream(b"a traceback the supervisor printed", stream=2)
    wire += engine_stream(frame(T_STDERR, 1, b"err") + frame(T_EXIT, 1, {"code": 3, "out": 10**6, "err": 3}))
    feed(ch, wire, cuts)
    assert ch.alive
    assert req.done.is_set() and req.outcome.exit_code == 3 and req.outcome.pid == 42
    assert bytes(req.outcome.stdout) == out[:8]
    assert req.outcome.stdout_bytes == max(len(out), 10**6)  # what the bottle says it dropped past the cap
    assert bytes(req.outcome.stderr) == b"err"


def test_an_oversized_frame_ends_the_channel_before_it_is_buffered() -> None:
    ch, req = channel()
    feed(ch, engine_stream(HELLO + HEADER.pack(T_STDOUT, 1, MAX_PAYLOAD + 1)))
    assert not ch.alive and "exceeds" in (ch.dead or "")
    assert req.done.is_set() and req.broken


def test_surprises_end_the_channel_with_a_reason() -> None:
    cases = {
        "before the hello": frame(T_STDOUT, 1, b"x"),
        "protocol": frame(T_HELLO, 0, {"v": 99}),
        "never sent": HELLO + frame(T_STDOUT, 9, b"x"),
        "bad pid": HELLO + frame(T_STARTED, 1, {"pid": -5}),
        "bad exit code": HELLO + frame(T_EXIT, 1, {"code": "zero"}),
        "not JSON": HELLO + frame(T_STARTED, 1, b"{nope"),
        "more input than it was sent": HELLO + frame(T_CREDIT, 1, (5).to_bytes(4, "big")),
        "unknown frame type": HELLO + frame(99, 1, b""),
    }
    for reason, wire in cases.items():
        ch, req = channel()
        feed(ch, engine_stream(wire))
        assert not ch.alive, reason
        assert reason in (ch.dead or ""), (reason, ch.dead)
        assert req.done.is_set() and req.broken


def test_late_output_of_a_finished_request_is_ignored() -> None:
    ch, req = channel()
    feed(ch, engine_stream(HELLO + frame(T_EXIT, 1, {"code": 0}) + frame(T_STDOUT, 1, b"late")))
    assert ch.alive and req.outcome.exit_code == 0 and bytes(req.outcome.stdout) == b""


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_any_bytes_at_all_never_raise_and_never_grow_buffers_past_their_bounds(junk: bytes) -> None:
    ch, _ = channel()
    feed(ch, engine_stream(HELLO) + junk)
    assert len(ch._buf) <= HEADER.size + MAX_PAYLOAD
    assert len(ch._diag) <= 4096
