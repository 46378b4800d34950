"""An interactive shell in a bottle for the person at the terminal (`bottle-mcp shell`).

The engine's own exec with a terminal, over docker-py's socket (no docker CLI needed):
the shell runs as the bottle's user, in the bottle's namespaces and cgroups, so it has
exactly the bottle's limits and network. This process relays bytes between the local
terminal (put in raw mode) and the exec's socket, and passes window size changes on.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import sys
import termios
import tty
from typing import Any

from ... import labels as L
from ...errors import BottleError
from .engine import Engine
from .rawsock import half_close, stream_socket

SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec sh -i; fi"


def find_bottle(engine: Engine, bottle_id: str) -> dict[str, Any]:
    """The inspected container of a running bottle (any server's, or kept)."""
    rows = engine.call_sync(
        "find the bottle",
        lambda c: c.api.containers(
            all=True, filters={"label": [f"{L.MANAGED}=true", f"{L.ROLE}=bottle", f"{L.BOTTLE}={bottle_id}"]}
        ),
    )
    if not rows:
        raise BottleError(f"no bottle {bottle_id!r} on the engine; `bottle-mcp ls` lists the bottles")
    if rows[0].get("State") != "running":
        raise BottleError(f"bottle {bottle_id!r} is {rows[0].get('State')}, not running")
    cid = str(rows[0]["Id"])
    inspected: dict[str, Any] = engine.call_sync("inspect the bottle", lambda c: c.api.inspect_container(cid))
    return inspected


def open_shell(engine: Engine, bottle_id: str, command: str | None = None) -> int:
    """Run an interactive shell (or `command` with a terminal) in the bottle; return its exit status."""
    inspected = find_bottle(engine, bottle_id)
    cid = str(inspected["Id"])
    user = str(inspected["Config"].get("User") or "")
    workdir = inspected["Config"].get("WorkingDir") or None
    argv = ["/bin/sh", "-c", command or SHELL]
    env = {"TERM": os.environ.get("TERM", "xterm")}
    exec_id = engine.call_sync(
        "start a shell",
        lambda c: c.api.exec_create(cid, argv, stdin=True, tty=True, user=user, workdir=workdir, environment=env)["Id"],
    )
    raw = engine.call_sync("start a shell", lambda c: c.api.exec_start(exec_id, tty=True, socket=True))
    sock = stream_socket(raw)  # a real socket whatever the transport (ssh:// included)
    sock.settimeout(None)

    def resize(*_: object) -> None:
        cols, rows = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            engine.call_sync("resize the terminal", lambda c: c.api.exec_resize(exec_id, height=rows, width=cols))

    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None
    old_winch = signal.signal(signal.SIGWINCH, resize)
    try:
        if saved is not None:
            tty.setraw(stdin_fd)
            resize()
        _relay(stdin_fd, stdout_fd, sock)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        with contextlib.suppress(OSError):
            sock.close()
    code = engine.call_sync("read the shell's exit status", lambda c: c.api.exec_inspect(exec_id)).get("ExitCode")
    return int(code) if isinstance(code, int) else 1


def _relay(stdin_fd: int, stdout_fd: int, sock: socket.socket) -> None:
    sock_fd = sock.fileno()
    watch = [stdin_fd, sock_fd]
    while True:
        ready, _, _ = select.select(watch, [], [])
        if sock_fd in ready:
            data = sock.recv(65536)
            if not data:
                return  # the shell ended
            os.write(stdout_fd, data)
        if stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            if data:
                sock.sendall(data)
            else:  # end of our input: tell the shell, keep reading what it still prints
                with contextlib.suppress(OSError):
                    half_close(sock)
                watch = [sock_fd]
