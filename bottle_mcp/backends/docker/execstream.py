"""One command in a container over the engine's exec API, bounded in time and output.

docker-py's `exec_run` blocks forever when the container dies mid-command and
cannot be interrupted, so this reads the hijacked stream itself with short
socket timeouts: it notices deadlines, aborts and the end of the stream, caps
what it keeps, and learns the command's pid (the wrapper prints it first) so
that a timeout or a cancelled call can kill the process inside the container.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import docker

from ...errors import BottleGoneError, EngineError, EngineNotFoundError
from .engine import Engine
from .rawsock import half_close, stream_socket

# `$$` of a fresh `docker exec` is a session and process-group leader, so
# killing that group and session later reaches everything the command started.
WRAPPER = 'printf "%s\\n" "$$"; exec /bin/sh -c "$1"'
KILL_SCRIPT = 'kill -KILL -- "-$1" 2>/dev/null; pkill -KILL -s "$1" 2>/dev/null; true'

POLL_S = 0.2
PID_WAIT_S = 3.0


@dataclass
class ExecOutcome:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    aborted: bool = False
    pid: int | None = None


def create_exec(
    client: Any,
    container_id: str,
    bottle_id: str,
    argv: list[str],
    *,
    user: str,
    workdir: str | None,
    stdin: bool,
    environment: dict[str, str] | None = None,
) -> str:
    """Create an exec (blocking); a missing or stopped container is BottleGoneError."""
    try:
        res = client.api.exec_create(
            container_id,
            argv,
            stdin=stdin,
            stdout=True,
            stderr=True,
            user=user,
            workdir=workdir,
            environment=environment or None,
        )
    except docker.errors.NotFound:
        raise BottleGoneError(bottle_id, "its container no longer exists") from None
    except docker.errors.APIError as e:
        if e.status_code == 409:
            raise BottleGoneError(bottle_id, "its container is not running") from None
        raise
    return str(res["Id"])


class ExecStream:
    """Run in a worker thread: `run()` blocks until the command ends, times out or is aborted."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        bottle_id: str,
        command: str | list[str],
        *,
        user: str,
        workdir: str | None,
        timeout_s: float,
        output_cap: int,
        stdin: IO[bytes] | bytes | None = None,
        environment: dict[str, str] | None = None,
        stdout_sink: Callable[[bytes], bool] | None = None,
    ) -> None:
        """A str command runs under `/bin/sh -c` in the kill-able wrapper; a list is a raw argv.

        With `stdout_sink`, stdout is handed to it as it arrives instead of being kept (it returns False
        to stop the command: the stream is then aborted)."""
        self.engine = engine
        self.container_id = container_id
        self.bottle_id = bottle_id
        self.wrap = isinstance(command, str)
        self.argv = ["/bin/sh", "-c", WRAPPER, "bottle-exec", command] if isinstance(command, str) else command
        self.user = user
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.output_cap = output_cap
        self.stdin = stdin
        self.environment = environment
        self.stdout_sink = stdout_sink
        self.outcome = ExecOutcome()
        self.abort = threading.Event()
        self.done = threading.Event()
        self._pid_buf = bytearray()
        self._sock: socket.socket | None = None

    # -- thread side -------------------------------------------------------------

    def run(self) -> ExecOutcome:
        try:
            self._run()
        finally:
            self.done.set()
        return self.outcome

    def _create(self, client: Any) -> str:
        return create_exec(
            client,
            self.container_id,
            self.bottle_id,
            self.argv,
            user=self.user,
            workdir=self.workdir,
            stdin=self.stdin is not None,
            environment=self.environment,
        )

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        exec_id = self.engine.call_sync("exec", self._create)
        raw = self.engine.call_sync("exec", lambda c: c.api.exec_start(exec_id, socket=True))
        sock = stream_socket(raw)
        self._sock = sock
        try:
            if self.stdin is not None:
                self._send_stdin(sock)
            self._read(sock, deadline)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        if not (self.outcome.timed_out or self.outcome.aborted):
            self.outcome.exit_code = self._exit_code(exec_id)

    def _send_stdin(self, sock: socket.socket) -> None:
        sock.settimeout(60)
        try:
            if isinstance(self.stdin, bytes):
                sock.sendall(self.stdin)
            elif self.stdin is not None:
                while chunk := self.stdin.read(1 << 20):
                    sock.sendall(chunk)
            half_close(sock)
        except OSError:
            pass  # the process exited early; its output and exit code tell why

    def _read(self, sock: socket.socket, deadline: float) -> None:
        buf = bytearray()
        pid_deadline: float | None = None
        while True:
            now = time.monotonic()
            if self.abort.is_set():
                # Wait a little for the pid line so the caller can kill what was started.
                if self.outcome.pid is not None or not self.wrap:
                    self.outcome.aborted = True
                    return
                pid_deadline = pid_deadline or now + PID_WAIT_S
                if now > pid_deadline:
                    self.outcome.aborted = True
                    return
            if now >= deadline:
                self.outcome.timed_out = True
                return
            sock.settimeout(max(0.01, min(POLL_S, deadline - now)))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            self._frames(buf)

    def _frames(self, buf: bytearray) -> None:
        while len(buf) >= 8:
            kind, size = struct.unpack(">BxxxL", buf[:8])
            if len(buf) < 8 + size:
                return
            payload = bytes(buf[8 : 8 + size])
            del buf[: 8 + size]
            if kind == 1:
                self._stdout(payload)
            elif kind == 2:
                self._keep(payload, self.outcome.stderr, "stderr")

    def _stdout(self, payload: bytes) -> None:
        if self.wrap and self.outcome.pid is None:
            self._pid_buf += payload
            nl = self._pid_buf.find(b"\n")
            if nl < 0:
                if len(self._pid_buf) > 32:  # not our wrapper talking; stop looking
                    self.wrap = False
                    self._keep(bytes(self._pid_buf), self.outcome.stdout, "stdout")
                return
            head, rest = bytes(self._pid_buf[:nl]), bytes(self._pid_buf[nl + 1 :])
            self.outcome.pid = int(head) if head.isdigit() else None
            self._pid_buf.clear()
            payload = rest
        self._keep(payload, self.outcome.stdout, "stdout")

    def _keep(self, payload: bytes, into: bytearray, which: str) -> None:
        if which == "stdout" and self.stdout_sink is not None:
            self.outcome.stdout_bytes += len(payload)
            if payload and not self.stdout_sink(payload):
                self.abort.set()
            return
        if which == "stdout":
            self.outcome.stdout_bytes += len(payload)
        else:
            self.outcome.stderr_bytes += len(payload)
        room = self.output_cap - len(into)
        if room > 0:
            into += payload[:room]

    def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(50):
            try:
                info = self.engine.call_sync("exec inspect", lambda c: c.api.exec_inspect(exec_id))
            except EngineNotFoundError:
                return None
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            time.sleep(0.02)
        return None

    # -- caller side -------------------------------------------------------------

    def kill(self) -> None:
        """Kill the command's process group and session inside the container (blocking)."""
        pid = self.outcome.pid
        if pid is None or pid <= 1:
            return
        try:
            killer = ExecStream(
                self.engine,
                self.container_id,
                self.bottle_id,
                ["/bin/sh", "-c", KILL_SCRIPT, "bottle-kill", str(pid)],
                user=self.user,
                workdir=None,
                timeout_s=10,
                output_cap=4096,
            )
            killer.run()
        except (BottleGoneError, EngineError):
            pass  # nothing left to kill, or the engine is gone with it
