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

Threads: one reader thread per channel blocks on the socket and hands raw bytes
to the event loop (at most a few chunks in flight); frames are parsed on the loop.
Writes that would block go through a worker thread, so a bottle that stops
reading can stall only its own channel, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any, cast

import anyio

from ...errors import BottleGoneError, EngineError
from .engine import Engine
from .execstream import ExecOutcome, ExecStream, create_exec
from .rawsock import stream_socket

log = logging.getLogger(__name__)

VERSION = 1
PROCESS_MARK = "bottle-mcp-exec-channel"
HEADER = struct.Struct(">BII")
DOCKER_HEADER = struct.Struct(">BxxxL")
T_OPEN, T_STDIN, T_KILL = 1, 2, 3
T_HELLO, T_STARTED, T_STDOUT, T_STDERR, T_EXIT, T_CREDIT = 10, 11, 12, 13, 14, 15

MAX_PAYLOAD = 256 * 1024  # the supervisor sends at most 64 KiB of output per frame
MAX_JSON = 4096
MAX_PID = 1 << 22  # the kernel's pid_max ceiling
MAX_COUNT = 1 << 62
HELLO_TIMEOUT_S = 10.0
KILL_CONFIRM_S = 2.0
STDIN_WINDOW = 4 << 20  # stdin bytes in flight before the bottle must acknowledge
STDIN_CHUNK = 1 << 20
READ_CHUNK = 1 << 16
INFLIGHT_CHUNKS = 8
DIAG_KEEP = 4096


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
        return sock

    def close(self, reason: str = "closed") -> None:
        """End the channel: pending requests fail, the supervisor sees end of input and kills what it runs."""
        if self.dead is None:
            self.dead = reason
            if reason != "closed":
                tail = bytes(self._diag[-400:]).decode(errors="replace").strip()
                log.info("exec channel of %s ended: %s%s", self.bottle_id, reason, f" ({tail})" if tail else "")
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

    # -- the reader thread ---------------------------------------------------------------

    def _reader(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None
        assert loop is not None
        reason = "the bottle closed the channel"
        try:
            while True:
                self._slots.acquire()
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

    def _frames(self) -> None:
        while len(self._buf) >= HEADER.size:
            kind, rid, size = HEADER.unpack_from(self._buf)
            if size > MAX_PAYLOAD:
                raise ChannelError(f"a frame of {size} bytes exceeds the {MAX_PAYLOAD}-byte bound")
            if len(self._buf) < HEADER.size + size:
                return
            payload = bytes(self._buf[HEADER.size : HEADER.size + size])
            del self._buf[: HEADER.size + size]
            self._on_frame(kind, rid, payload)

    def _on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == T_HELLO:
            hello = _json(payload)
            if hello.get("v") != VERSION:
                raise ChannelError(f"the supervisor speaks protocol {hello.get('v')!r}, not {VERSION}")
            self._hello.set()
            self._settled.set()
            return
        if not self._hello.is_set():
            raise ChannelError("a frame arrived before the hello")
        req = self._pending.get(rid)
        if req is None:
            if 0 < rid < self._next_id:
                return  # late output of a request the server already gave up on
            raise ChannelError(f"a frame for request {rid}, which was never sent")
        if kind in (T_STDOUT, T_STDERR):
            _on_output(req, kind == T_STDOUT, payload)
        elif kind == T_STARTED:
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
        data = HEADER.pack(kind, rid, len(payload)) + payload
        sock = self._sock
        async with self._send_lock:
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
        request = {"cmd": command, "cwd": workdir, "env": env, "stdin": stdin is not None, "cap": output_cap}
        try:
            await self._send(T_OPEN, rid, json.dumps(request).encode())
        except ChannelError:
            self._pending.pop(rid, None)
            raise
        try:
            with anyio.move_on_after(timeout_s) as scope:
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


def _json(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_JSON:
        raise ChannelError(f"a control frame of {len(payload)} bytes exceeds {MAX_JSON}")
    try:
        obj = json.loads(payload)
    except ValueError:
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
