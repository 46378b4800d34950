"""The ssh-agent relay the bottle runs (bottle_mcp/data/ssh_agent_relay.py), run as the file it is.

A loopback TCP server stands in for the gate's agent behind the forwarder: what a client
writes to the relay's Unix socket must reach it, its answer must come back, and the socket
must be the bottle user's alone.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from bottle_mcp.backends.docker import gates

RELAY = Path(str(resources.files("bottle_mcp") / "data" / "ssh_agent_relay.py"))


@pytest.fixture
def agent() -> Iterator[int]:
    """A loopback stand-in for the gate's agent: answers each message with 'signed:' + the message."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"signed:" + data)

    threading.Thread(target=answer, daemon=True).start()
    yield port
    server.close()


def _wait_for(path: Path) -> None:
    for _ in range(200):
        if path.exists():
            return
        time.sleep(0.02)  # the relay has no other way to say it listens
    pytest.fail(f"the relay did not create {path}")


def test_the_relay_carries_agent_requests_to_the_gate_and_back(tmp_path: Path, agent: int) -> None:
    sock = tmp_path / "agent-0.sock"
    proc = subprocess.Popen([sys.executable, "-I", str(RELAY), f"{sock}:{agent}"])
    try:
        _wait_for(sock)
        assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0  # no one but the bottle's user
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(str(sock))
            c.sendall(b"sign this")
            assert c.recv(1024) == b"signed:sign this"
    finally:
        proc.kill()
        proc.wait()


def test_the_relay_refuses_an_argument_that_is_not_socket_and_port(tmp_path: Path) -> None:
    argv = [sys.executable, "-I", str(RELAY), str(tmp_path / "x.sock")]
    res = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert res.returncode != 0 and "is not SOCKET:PORT" in res.stderr


def test_the_bottle_gets_the_file_itself() -> None:
    from bottle_mcp.manifest import BottleDef

    bdef = BottleDef.model_validate(
        {"image": "x", "ssh": [{"host": "h", "hostname": "example.test", "user": "u", "identity_file": "k"}]}
    )
    assert gates.bottle_files(bdef)[".bottle-mcp/ssh-agent-relay.py"] == RELAY.read_text(encoding="utf-8")
