"""The official MCP conformance suite against the same server, served over Streamable HTTP on loopback.

Every scenario of the active suite must pass except those in conformance-baseline.yml, each
listed there with the reason it does not apply. The suite itself fails when a listed scenario
passes, so the baseline cannot go stale silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Clients, server_argv

BASELINE = Path(__file__).with_name("conformance-baseline.yml")
# The protocol scenarios a tools-only server must pass (a floor, in case the suite renames or drops some).
MUST_PASS = {"server-initialize", "ping", "tools-list", "tools-call-error", "dns-rebinding-protection"}
START_TIMEOUT_S = 30


def baseline_scenarios() -> list[str]:
    return [
        line.strip()[2:].strip()
        for line in BASELINE.read_text().splitlines()
        if line.strip().startswith("- ") and not line.lstrip().startswith("#")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AuthForwarder:
    """Loopback forwarder that adds the bearer token to each request: the suite cannot send headers.

    A Host or Origin that names the forwarder is rewritten to name the server; any other (the suite's
    DNS-rebinding scenario) goes through unchanged, so the server still judges it.
    """

    def __init__(self, target_port: int, token: str) -> None:
        self.target_port = target_port
        self.token = token.encode()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pipe, args=(up, conn), daemon=True).start()
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                out, length = [lines[0]], 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    key = name.strip().lower()
                    if key == b"authorization":
                        continue
                    if key == b"content-length":
                        length = int(value.strip())
                    if key == b"host" and value.strip() == f"127.0.0.1:{self.port}".encode():
                        out.append(f"Host: 127.0.0.1:{self.target_port}".encode())
                    elif key == b"origin" and value.strip() == f"http://127.0.0.1:{self.port}".encode():
                        out.append(f"Origin: http://127.0.0.1:{self.target_port}".encode())
                    else:
                        out.append(line)
                out.append(b"Authorization: Bearer " + self.token)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                up.sendall(b"\r\n".join(out) + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
        except OSError:
            return
        finally:
            up.close()
            conn.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def http_server(minimal_manifest: Path, tmp_path: Path) -> Iterator[str]:
    """`bottle-mcp serve --http` on the fake backend; yields the URL of a forwarder that adds its token."""
    port = free_port()
    token = "conformance-" + secrets.token_urlsafe(24)
    env = {**os.environ, "BOTTLE_MCP_BACKEND": "fake", "BOTTLE_MCP_HTTP_TOKEN": token}
    proc = subprocess.Popen(
        server_argv(minimal_manifest, "--http", f"127.0.0.1:{port}"),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "Uvicorn running on" in line:
                listening.set()
        listening.set()  # the server exited: stop waiting

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(START_TIMEOUT_S), "the HTTP server did not start:\n" + "".join(log)
        assert proc.poll() is None, "the HTTP server exited:\n" + "".join(log)
        forwarder = AuthForwarder(port, token)
        try:
            yield f"http://127.0.0.1:{forwarder.port}/mcp"
        finally:
            forwarder.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        reader.join(timeout=5)


def test_baseline_lists_only_scenarios_the_suite_knows(clients: Clients, tmp_path: Path) -> None:
    done = clients.run("conformance", ["list"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    known = {line.strip()[2:].split(" ")[0] for line in done.stdout.splitlines() if line.strip().startswith("- ")}
    unknown = sorted(set(baseline_scenarios()) - known)
    assert not unknown, f"the baseline names scenarios the suite does not have: {unknown}"
    assert not MUST_PASS & set(baseline_scenarios())


def test_conformance_suite_passes_every_scenario_that_applies(
    clients: Clients, http_server: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    done = clients.run(
        "conformance",
        ["server", "--url", http_server, "--expected-failures", str(BASELINE), "-o", str(results)],
        cwd=tmp_path,
        timeout=300,
    )
    summary = done.stdout[done.stdout.find("=== SUMMARY") :]
    assert done.returncode == 0, f"conformance failed (exit {done.returncode}):\n{summary}\n{done.stderr[-2000:]}"
    passed = set()
    for checks_file in results.glob("*/checks.json"):
        # results/server-<scenario>-<timestamp>/checks.json
        scenario = re.sub(r"-\d{4}-\d{2}-\d{2}T[0-9-]+Z$", "", checks_file.parent.name.removeprefix("server-"))
        checks = json.loads(checks_file.read_text())
        if checks and all(c.get("status") != "FAILURE" for c in checks):
            passed.add(scenario)
    assert passed >= MUST_PASS, f"these protocol scenarios did not pass: {sorted(MUST_PASS - passed)}\n{summary}"
