"""ssh-agent relay for a bottle: SOCKET:PORT... (the key stays in the gate).

Runs in the bottle (`python3 ssh-agent-relay.py SOCKET:PORT ...`, standard library
only). For each argument it listens on a Unix socket, where the bottle's ssh client
looks for its agent (IdentityAgent), and relays every connection to a loopback port
of the gate's forwarder, behind which the gate's ssh-agent answers signature
requests. The agent never hands out the key, and nothing here can ask it to.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until either side ends, then shut both down."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def listen(path: str) -> socket.socket:
    """A Unix socket at `path` that only the bottle's user may use."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX)
    old = os.umask(0o077)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(16)
    return server


def serve(path: str, port: int) -> None:
    server = listen(path)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def parse(arg: str) -> tuple[str, int]:
    """'SOCKET:PORT' -> (socket path, port)."""
    path, _, port = arg.rpartition(":")
    if not path or not port.isdigit():
        raise SystemExit(f"ssh-agent-relay: {arg!r} is not SOCKET:PORT")
    return path, int(port)


def main(args: list[str]) -> None:
    threads = [threading.Thread(target=serve, args=parse(arg), daemon=True) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1:])
