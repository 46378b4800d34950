"""A long-lived exec channel into one bottle: many commands over one engine exec.

A new engine exec costs tens of milliseconds, almost all of it the engine. The
channel pays that once: at launch the server starts the supervisor
(`bottle_mcp/data/supervisor.py`) as the bottle's user over one exec whose
stdin/stdout stay attached, and then runs each command as a request on it
(about a millisecond). No network is involved, so a network-less bottle stays so.

Everything that comes back is the bottle's word, and the bottle's agent may
have replaced the supervisor. So the server bounds every frame and buffer,
validates every field, keeps its own deadlines and output caps, and treats any
surprise as the end of the channel: the caller then falls back to one engine
exec per command (`execstream.py`). A kill that the channel does not confirm
is repeated through the engine, aimed at the pid the channel reported; that pid
is trusted only inside this bottle, where the kill runs as the bottle's user.

The supervisor makes itself not dumpable before its hello (and says so in it),
so no other process in the bottle can reopen its standard input and output
through /proc; a channel whose supervisor could not do that is not used. The
bottle's user can still stop or kill it: a command whose start is not confirmed
in time, like a kill that is not, ends the channel.

Bounds: frames are limited in size, and the reader thread throttles the bottle
to a fixed budget of frames per second (the engine's stream frames count too),
so a flood costs the server a bounded share of a core: the bottle's writes
simply block. Frames that serve no request (for a finished request, output past
the cap, empty output, a zero credit, stderr chatter) are counted, and past a
small threshold the channel is closed. Any malformed input ends the channel
with a reason; nothing a bottle sends raises into the event loop.

Threads: one reader thread per channel blocks on the socket and hands raw bytes
to the event loop (at most a few chunks in flight); frames are parsed on the loop.
Writes that would block go through a worker thread, so a bottle that stops
reading can stall only its own channel, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any, cast

import anyio

from ...errors import BottleGoneError, EngineError
from ...logsafe import bottle_text
from .engine import Engine
from .execstream import ExecOutcome, ExecStream, create_exec
from .rawsock import stream_socket

log = logging.getLogger(__name__)

VERSION = 1
PROCESS_MARK = "bottle-mcp-exec-channel"
HEADER = struct.Struct(">BII")
DOCKER_HEADER = struct.Struct(">BxxxL")
T_OPEN, T_STDIN, T_KILL, T_KEY = 1, 2, 3, 4
TAG = 16
T_HELLO, T_STARTED, T_STDOUT, T_STDERR, T_EXIT, T_CREDIT = 10, 11, 12, 13, 14, 15

MAX_PAYLOAD = 256 * 1024  # the supervisor sends at most 64 KiB of output per frame
MAX_JSON = 4096
MAX_PID = 1 << 22  # the kernel's pid_max ceiling
MAX_COUNT = 1 << 62
HELLO_TIMEOUT_S = 10.0
KILL_CONFIRM_S = 2.0
START_CONFIRM_S = 5.0  # a supervisor answers an OPEN within milliseconds; silence means it was stopped
STDIN_WINDOW = 4 << 20  # stdin bytes in flight before the bottle must acknowledge
STDIN_CHUNK = 1 << 20
READ_CHUNK = 1 << 16
INFLIGHT_CHUNKS = 8
DIAG_KEEP = 4096
# The flood bounds. A frame here is either an engine stream frame or one of ours.
FRAME_RATE = 2000  # frames per second, sustained (64 KiB frames: 128 MiB/s)
FRAME_BURST = 8000
JUNK_LIMIT = 64  # frames that serve no request, before the channel is closed
DIAG_LIMIT = 64 * 1024  # bytes the supervisor may write to its stderr in all


# Kill a supervisor whose channel ended, if that pid still runs the supervisor (never anything else).
RETIRE_SUPERVISOR = (
    'p=$1; case "$(tr "\\000" " " < "/proc/$p/cmdline" 2>/dev/null)" in '
    f'*"{PROCESS_MARK}"*) kill -KILL "$p" 2>/dev/null;; esac; true'
)


class ChannelError(Exception):
    """The channel is unusable; the reason says why (for logs and notes, never for the agent to act on)."""


def supervisor_source() -> str:
    return (resources.files("bottle_mcp") / "data" / "supervisor.py").read_text(encoding="utf-8")


@dataclass
class _Request:
    rid: int
    cap: int
    outcome: ExecOutcome = field(default_factory=ExecOutcome)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    unacked: int = 0
    broken: str | None = None


class Channel:
    """One supervisor in one bottle. Use `await Channel.open(...)`; then `run()` many times."""

    def __init__(self, engine: Engine, container_id: str, bottle_id: str, user: str) -> None:
        self.engine = engine
        self.container_id = container_id
        self.bottle_id = bottle_id
        self.user = user
        self.dead: str | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, _Request] = {}
        self._next_id = 1
        self._send_lock = anyio.Lock()
        self._hello = asyncio.Event()
        self._settled = asyncio.Event()  # hello received, or the channel ended first
        self._slots = threading.Semaphore(INFLIGHT_CHUNKS)
        # Demultiplexing state: the engine's 8-byte stream frames, then ours inside stream 1.
        self._dbuf = bytearray()
        self._dleft = 0
        self._dkind = 0
        self._buf = bytearray()
        self._diag = bytearray()
        self._diag_total = 0
        self.frames = 0  # counted on the loop, read by the reader thread to throttle
        self.junk = 0
        self.supervisor_pid: int | None = None
        self._key = secrets.token_bytes(32)
        self._seq_in = 0
        self._seq_out = 0

    @property
    def alive(self) -> bool:
        return self.dead is None

    # -- opening and closing ---------------------------------------------------------

    @classmethod
    async def open(cls, engine: Engine, container_id: str, bottle_id: str, user: str, *, wait: bool = True) -> Channel:
        """Start the supervisor and (unless `wait` is false) wait for its hello.

        Without waiting, the first `run()` waits instead, so that the supervisor's start-up
        overlaps with other work. Raises ChannelError, BottleGoneError or EngineError.
        """
        ch = cls(engine, container_id, bottle_id, user)
        ch._loop = asyncio.get_running_loop()
        ch._sock = await engine.run(ch._start_exec)
        threading.Thread(target=ch._reader, name=f"channel-{bottle_id}", daemon=True).start()
        if wait:
            await ch.ready()
        return ch

    async def ready(self) -> None:
        """Wait for the supervisor's hello; raise ChannelError (and close) if it does not come."""
        if self._hello.is_set() and not self.dead:
            return
        with anyio.move_on_after(HELLO_TIMEOUT_S):
            await self._settled.wait()
        if not self._hello.is_set() or self.dead:
            reason = self.dead or f"no hello within {HELLO_TIMEOUT_S:g} s"
            self.close(reason)
            raise ChannelError(f"the exec channel did not start: {reason}")

    def _start_exec(self) -> socket.socket:
        # The first line (a comment) names the process in `ps` output.
        argv = ["python3", "-I", "-S", "-c", f"# {PROCESS_MARK}\n" + supervisor_source()]
        exec_id = self.engine.call_sync(
            "start the exec channel",
            lambda c: create_exec(c, self.container_id, self.bottle_id, argv, user=self.user, workdir=None, stdin=True),
        )
        raw = self.engine.call_sync("start the exec channel", lambda c: c.api.exec_start(exec_id, socket=True))
        sock = stream_socket(raw)
        if type(sock) is not socket.socket:
            with contextlib.suppress(Exception):
                raw.close()
            raise ChannelError(f"the engine connection is a {type(sock).__name__}, not a plain socket")
        sock.settimeout(None)
        # The key goes first, before anything of the agent runs in the bottle; the supervisor keeps it in
        # memory that the bottle's processes cannot read (it is not dumpable).
        try:
            sock.sendall(HEADER.pack(T_KEY, 0, len(self._key)) + self._key)
        except OSError as e:
            with contextlib.suppress(OSError):
                sock.close()
            raise ChannelError(f"cannot send the channel's key: {e}") from None
        return sock

    def close(self, reason: str = "closed") -> None:
        """End the channel: pending requests fail, the supervisor sees end of input and kills what it runs."""
        if self.dead is None:
            self.dead = reason
            if reason != "closed":
                # The supervisor's stderr is the bottle's word: escaped and clipped here, redacted by the
                # server's log filter (logsafe.LogGuard).
                tail = bottle_text(bytes(self._diag[-400:]).strip())
                why = bottle_text(reason)
                log.info("exec channel of %s ended: %s%s", self.bottle_id, why, f" ({tail})" if tail else "")
                if self._sock is not None and self.supervisor_pid is not None:
                    # Stopped, flooding or silent: it must not resume (and run a request it already holds),
                    # nor spin on writes nobody reads. Killed through the engine, off the event loop.
                    threading.Thread(target=self._retire, name=f"retire-{self.bottle_id}", daemon=True).start()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._sock.close()
        for req in self._pending.values():
            req.broken = req.broken or self.dead
            req.started.set()
            req.done.set()
            req.credit.set()
        self._pending.clear()
        self._settled.set()

    def _retire(self) -> None:
        pid = self.supervisor_pid
        argv = ["/bin/sh", "-c", RETIRE_SUPERVISOR, "bottle-retire", str(pid)]
        stream = ExecStream(
            self.engine,
            self.container_id,
            self.bottle_id,
            argv,
            user=self.user,
            workdir=None,
            timeout_s=10,
            output_cap=4096,
        )
        try:
            stream.run()
        except Exception as e:  # a daemon thread: nobody to raise to
            log.info("bottle %s: could not retire its exec channel's supervisor: %s", self.bottle_id, e)

    # -- the reader thread ---------------------------------------------------------------

    def _reader(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None
        assert loop is not None
        reason = "the bottle closed the channel"
        tokens, counted, last = float(FRAME_BURST), 0, time.monotonic()
        try:
            while True:
                self._slots.acquire()
                # A token bucket of frames: past it the bottle waits (its writes block); the server never spins.
                now, seen = time.monotonic(), self.frames
                tokens = min(float(FRAME_BURST), tokens + FRAME_RATE * (now - last)) - (seen - counted)
                counted, last = seen, now
                if tokens < 0 and self.dead is None:
                    time.sleep(min(1.0, -tokens / FRAME_RATE))
                data = sock.recv(READ_CHUNK)
                if not data:
                    break
                loop.call_soon_threadsafe(self._feed, data)
        except OSError as e:
            reason = f"the channel's connection failed: {e}"
        except RuntimeError:  # the event loop is closed: the server is gone
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(self.close, reason)

    # -- parsing (on the event loop) ---------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._slots.release()
        if self.dead:
            return
        try:
            self._demux(data)
        except ChannelError as e:
            self.close(str(e))
        except Exception as e:  # whatever the bottle sent must not reach the event loop
            self.close(f"the channel's input could not be parsed ({type(e).__name__})")

    def _demux(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._dleft == 0:
                need = DOCKER_HEADER.size - len(self._dbuf)
                self._dbuf += view[:need]
                view = view[need:]
                if len(self._dbuf) < DOCKER_HEADER.size:
                    return
                self._dkind, self._dleft = DOCKER_HEADER.unpack(self._dbuf)
                self._dbuf.clear()
                self.frames += 1
                continue
            part = view[: self._dleft]
            view = view[len(part) :]
            self._dleft -= len(part)
            if self._dkind == 1:
                self._buf += part
                self._frames()
            else:  # the supervisor's own stderr (a traceback, say): keep a bounded tail for the log
                self._diag += part
                del self._diag[:-DIAG_KEEP]
                self._diag_total += len(part)
                if self._diag_total > DIAG_LIMIT:
                    raise ChannelError(f"the supervisor wrote more than {DIAG_LIMIT} bytes to its stderr")

    def _frames(self) -> None:
        while len(self._buf) >= HEADER.size:
            kind, rid, size = HEADER.unpack_from(self._buf)
            if size > MAX_PAYLOAD:
                raise ChannelError(f"a frame of {size} bytes exceeds the {MAX_PAYLOAD}-byte bound")
            if len(self._buf) < HEADER.size + size + TAG:
                return
            frame = bytes(self._buf[: HEADER.size + size])
            tag = bytes(self._buf[HEADER.size + size : HEADER.size + size + TAG])
            del self._buf[: HEADER.size + size + TAG]
            self.frames += 1
            if not hmac.compare_digest(tag, self._tag(b"S", self._seq_in, frame)):
                raise ChannelError("a frame without the supervisor's seal (something else wrote into the channel)")
            self._seq_in += 1
            self._on_frame(kind, rid, frame[HEADER.size :])

    def _tag(self, direction: bytes, seq: int, frame: bytes) -> bytes:
        return hmac.new(self._key, direction + seq.to_bytes(8, "big") + frame, hashlib.sha256).digest()[:TAG]

    def _wasted(self, what: str) -> None:
        """Count a frame that served no request; too many end the channel."""
        self.junk += 1
        if self.junk > JUNK_LIMIT:
            raise ChannelError(f"more than {JUNK_LIMIT} frames served no request (the last: {what})")

    def _on_hello(self, payload: bytes) -> None:
        if self._hello.is_set():
            raise ChannelError("a second hello")
        hello = _json(payload)
        if hello.get("v") != VERSION:
            raise ChannelError(f"the supervisor speaks protocol {hello.get('v')!r}, not {VERSION}")
        if hello.get("sealed") is not True:
            raise ChannelError("the supervisor could not make itself non-dumpable, so the bottle could reach it")
        pid = hello.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and 1 < pid < MAX_PID:
            self.supervisor_pid = pid
        self._hello.set()
        self._settled.set()

    def _count_waste(self, req: _Request, kind: int, payload: bytes) -> None:
        """Output and credit frames that serve nothing: empty, past the cap, a zero credit."""
        if kind == T_CREDIT:
            if payload == bytes(4):
                self._wasted("a zero credit")
            return
        sent = req.outcome.stdout_bytes if kind == T_STDOUT else req.outcome.stderr_bytes
        if not payload or sent >= req.cap:
            self._wasted("empty output" if not payload else "output past the cap")

    def _on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == T_HELLO:
            self._on_hello(payload)
            return
        if not self._hello.is_set():
            raise ChannelError("a frame arrived before the hello")
        req = self._pending.get(rid)
        if req is None:
            if 0 < rid < self._next_id:
                self._wasted(f"a frame for finished request {rid}")
                return
            raise ChannelError(f"a frame for request {rid}, which was never sent")
        if kind in (T_STDOUT, T_STDERR, T_CREDIT):
            self._count_waste(req, kind, payload)
        if kind in (T_STDOUT, T_STDERR):
            _on_output(req, kind == T_STDOUT, payload)
        elif kind == T_STARTED:
            if req.started.is_set():
                raise ChannelError(f"a second start for request {rid}")
            pid = _json(payload).get("pid")
            if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < MAX_PID:
                raise ChannelError(f"bad pid {pid!r}")
            req.outcome.pid = pid or None
            req.started.set()
        elif kind == T_CREDIT:
            _on_credit(req, payload)
        elif kind == T_EXIT:
            _on_exit(req, payload)
            del self._pending[rid]
        else:
            raise ChannelError(f"unknown frame type {kind}")

    # -- writing ---------------------------------------------------------------------

    async def _send(self, kind: int, rid: int, payload: bytes = b"") -> None:
        if self.dead or self._sock is None:
            raise ChannelError(self.dead or "not open")
        sock = self._sock
        async with self._send_lock:
            if kind == T_OPEN:  # requests are enciphered; input data only sealed
                payload = mask(self._key, self._seq_out, payload)
            frame = HEADER.pack(kind, rid, len(payload)) + payload
            data = frame + self._tag(b"C", self._seq_out, frame)
            self._seq_out += 1
            try:
                sent = sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self.close(f"writing to the channel failed: {e}")
                raise ChannelError(self.dead or "") from None
            if sent < len(data):
                try:
                    await self.engine.run(sock.sendall, data[sent:], abandon_on_cancel=True)
                except OSError as e:
                    self.close(f"writing to the channel failed: {e}")
                    raise ChannelError(self.dead or "") from None

    # -- running a command -------------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        timeout_s: float,
        workdir: str | None,
        output_cap: int,
        env: dict[str, str],
        stdin: IO[bytes] | bytes | None = None,
        keep: dict[str, object] | None = None,
    ) -> tuple[ExecOutcome, str | None]:
        """Run one command; return its outcome and, if the channel broke under it, why.

        Raises ChannelError only when nothing was started (the caller may then use an engine exec).
        A timeout or a cancellation kills the command's session; if the channel does not confirm
        that in time, the kill is repeated through the engine and the channel is closed.
        """
        await self.ready()
        rid = self._next_id
        self._next_id += 1
        req = _Request(rid=rid, cap=output_cap)
        self._pending[rid] = req
        request: dict[str, object] = {
            "cmd": command,
            "cwd": workdir,
            "env": env,
            "stdin": stdin is not None,
            "cap": output_cap,
        }
        if keep is not None:  # the supervisor keeps the output in files and sends its head and tail
            request["keep"] = keep
        try:
            await self._send(T_OPEN, rid, json.dumps(request).encode())
        except ChannelError:
            self._pending.pop(rid, None)
            raise
        try:
            with anyio.move_on_after(timeout_s) as scope:
                with anyio.move_on_after(START_CONFIRM_S):
                    await req.started.wait()
                if not req.started.is_set():
                    # A stopped supervisor answers nothing. The command may or may not have started:
                    # never run it again; the caller reports the outcome as unknown.
                    self.close(f"the supervisor stopped answering (no start confirmed within {START_CONFIRM_S:g} s)")
                if stdin is not None:
                    try:
                        await self._feed_stdin(req, stdin)
                    except ChannelError as e:  # the command started: report it broken, never run it again
                        req.broken = req.broken or self.dead or str(e)
                        req.done.set()
                await req.done.wait()
            if scope.cancelled_caught and not req.done.is_set():
                req.outcome.timed_out = True
                await self._kill(req)
            elif req.broken and req.outcome.pid:
                # The channel died under the command: make sure it does not live on unsupervised.
                await self._engine_kill(req.outcome.pid)
        except BaseException:
            with anyio.CancelScope(shield=True):
                req.outcome.aborted = True
                await self._kill(req)
            raise
        return req.outcome, req.broken

    async def _feed_stdin(self, req: _Request, stdin: IO[bytes] | bytes) -> None:
        reader: Callable[[], bytes]
        if isinstance(stdin, bytes):
            view = memoryview(stdin)
            pos = 0

            def reader() -> bytes:
                nonlocal pos
                chunk = bytes(view[pos : pos + STDIN_CHUNK])
                pos += len(chunk)
                return chunk
        else:

            def reader() -> bytes:
                return stdin.read(STDIN_CHUNK)

        while not req.done.is_set():
            while req.unacked + STDIN_CHUNK > STDIN_WINDOW and not req.done.is_set():
                req.credit.clear()
                await req.credit.wait()
            if req.done.is_set():
                return
            chunk = reader() if isinstance(stdin, bytes) else await self.engine.run(reader)
            req.unacked += len(chunk)
            await self._send(T_STDIN, req.rid, chunk)
            if not chunk:
                return

    async def _kill(self, req: _Request) -> None:
        if req.done.is_set():
            return
        with anyio.move_on_after(KILL_CONFIRM_S):
            with contextlib.suppress(ChannelError):
                await self._send(T_KILL, req.rid)
            await req.done.wait()
        if req.done.is_set() and not req.broken:
            return
        # The bottle did not confirm: do it through the engine, and stop trusting this channel.
        self.close(req.broken or f"the supervisor did not confirm a kill within {KILL_CONFIRM_S:g} s")
        if req.outcome.pid:
            await self._engine_kill(req.outcome.pid)

    async def _engine_kill(self, pid: int) -> None:
        if pid > 1:
            await self.engine.run(_engine_kill, self.engine, self.container_id, self.bottle_id, self.user, pid)


def _engine_kill(engine: Engine, container_id: str, bottle_id: str, user: str, pid: int) -> None:
    stream = ExecStream(engine, container_id, bottle_id, "", user=user, workdir=None, timeout_s=10, output_cap=0)
    stream.outcome.pid = pid
    with contextlib.suppress(BottleGoneError, EngineError):
        stream.kill()


def mask(key: bytes, seq: int, data: bytes) -> bytes:
    """Encipher a payload for the supervisor: XOR with SHAKE-256(key, direction, sequence number)."""
    if not data:
        return data
    stream = hashlib.shake_256(key + b"E" + seq.to_bytes(8, "big")).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _json(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_JSON:
        raise ChannelError(f"a control frame of {len(payload)} bytes exceeds {MAX_JSON}")
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise ChannelError("a control frame that is not JSON") from None
    if not isinstance(obj, dict):
        raise ChannelError("a control frame that is not a JSON object")
    return cast(dict[str, Any], obj)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    return 0


def _on_output(req: _Request, stdout: bool, payload: bytes) -> None:
    out = req.outcome
    into = out.stdout if stdout else out.stderr
    if stdout:
        out.stdout_bytes += len(payload)
    else:
        out.stderr_bytes += len(payload)
    room = req.cap - len(into)
    if room > 0:
        into += payload[:room]


def _on_credit(req: _Request, payload: bytes) -> None:
    if len(payload) != 4:
        raise ChannelError("a credit frame of the wrong size")
    (n,) = struct.unpack(">I", payload)
    if n > req.unacked:
        raise ChannelError("the bottle acknowledged more input than it was sent")
    req.unacked -= n
    req.credit.set()


def _on_exit(req: _Request, payload: bytes) -> None:
    out = req.outcome
    info = _json(payload)
    code = info.get("code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool) or not -1 < code < 256):
        raise ChannelError(f"bad exit code {code!r}")
    out.exit_code = code
    # The supervisor counts what it dropped past the cap; never report less than was received.
    out.stdout_bytes = max(out.stdout_bytes, _count(info.get("out")))
    out.stderr_bytes = max(out.stderr_bytes, _count(info.get("err")))
    req.started.set()
    req.done.set()
    req.credit.set()
