"""A real socket for every hijacked exec stream, whatever transport reaches the engine.

Over a Unix socket or TCP, docker-py hands back the connection's socket. Over `ssh://` (the system's
ssh client running `docker system dial-stdio`) it hands back an object that only looks like one:
its `recv(n)` blocks until n bytes arrive, and timeouts and half-closes do nothing. The exec code
needs all three, so such a stream is bridged onto one end of a socket pair by two small threads.

Over TLS the end of input is TLS's own close_notify, as Docker's CLI sends it: a TCP half-close
would cut the TLS session, and Python's `SSLSocket.shutdown` drops the session on our side too, so
everything the engine sends after it would be read as raw records.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from typing import IO, Any

CHUNK = 1 << 16


def stream_socket(raw: Any) -> socket.socket:
    """The socket to read and write a hijacked exec stream through."""
    sock = getattr(raw, "_sock", raw)
    proc = getattr(sock, "proc", None)
    if isinstance(proc, subprocess.Popen) and proc.stdout is not None and proc.stdin is not None:
        return _bridge(proc, proc.stdout, proc.stdin)
    return sock  # type: ignore[no-any-return]


def half_close(sock: socket.socket) -> None:
    """Tell the engine our input has ended, and keep reading what it still sends."""
    if not isinstance(sock, ssl.SSLSocket):
        sock.shutdown(socket.SHUT_WR)
        return
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        # Sends close_notify, then would wait for the engine's, which comes only after its output:
        # non-blocking, it stops there, the session still open for reading.
        sock.unwrap()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass
    finally:
        sock.settimeout(timeout)


def _bridge(proc: subprocess.Popen[bytes], out: IO[bytes], into: IO[bytes]) -> socket.socket:
    ours, theirs = socket.socketpair()

    def downstream() -> None:  # engine -> caller; read1 also returns what the HTTP parser buffered
        try:
            while chunk := out.read1(CHUNK):  # type: ignore[attr-defined]
                theirs.sendall(chunk)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_WR)
            _finish(proc, theirs, into)

    def upstream() -> None:  # caller -> engine; the caller's half-close becomes ssh's end of input
        try:
            while chunk := theirs.recv(CHUNK):
                into.write(chunk)
                into.flush()
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                into.close()

    threading.Thread(target=downstream, name="ssh-stream-down", daemon=True).start()
    threading.Thread(target=upstream, name="ssh-stream-up", daemon=True).start()
    return ours


def _finish(proc: subprocess.Popen[bytes], theirs: socket.socket, into: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        into.close()
    if proc.poll() is None:
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    theirs.close()
