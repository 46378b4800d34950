"""An engine reached over TCP with TLS (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), as remote engines are.

The test stands a TLS front of its own on loopback (client certificates required) before the
local engine's socket, with a CA, server and client certificates made by openssl, and drives a
bottle through it; a client holding a certificate of another CA is refused with the TLS fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.endpoint import resolve
from bottle_mcp.backends.docker.engine import Engine
from bottle_mcp.errors import EngineError
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

pytestmark = pytest.mark.anyio

ENGINE_SOCKET = "/var/run/docker.sock"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=folder)  # fmt: skip


def _issue(ca: Path, out: Path, stem: str, cn: str, ext: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", f"{out}/{stem}-key.pem", "-out", f"{out}/{stem}.csr", cwd=ca)  # fmt: skip
    (out / f"{stem}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{out}/{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "2", "-extfile", f"{out}/{stem}.ext", "-out", f"{out}/{stem}.pem",
             cwd=ca)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    _make_ca(root / "ca", "bottle-mcp test CA")
    _make_ca(root / "other-ca", "someone else's CA")
    server, client, stranger = root / "server", root / "client", root / "stranger"
    for folder in (server, client, stranger):
        folder.mkdir()
    _issue(root / "ca", server, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(root / "ca", client, "cert", "client", "extendedKeyUsage=clientAuth\n")
    _issue(root / "other-ca", stranger, "cert", "stranger", "extendedKeyUsage=clientAuth\n")
    # DOCKER_CERT_PATH layout: ca.pem, cert.pem, key.pem.
    for folder, ca in ((client, root / "ca"), (stranger, root / "other-ca")):
        shutil.copy(ca / "ca.pem", folder / "ca.pem")
        (folder / "cert-key.pem").rename(folder / "key.pem")
    shutil.copy(root / "ca" / "ca.pem", server / "ca.pem")
    return root


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Relay a -> b; the end of a's data ends b's input only (a half-close), as the engine's own TLS does."""
    try:
        while chunk := a.recv(65536):
            b.sendall(chunk)
        if not isinstance(b, ssl.SSLSocket):
            b.shutdown(socket.SHUT_WR)  # close_notify from the client: the end of the exec's input
            return
    except OSError:
        pass
    # The engine closed (or a side failed): the connection ends, both ways.
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def tls_front(certs: Path) -> Iterator[int]:
    """A TLS listener on loopback that requires a client certificate of our CA, then relays to the engine."""
    if os.environ.get("DOCKER_HOST") or not os.path.exists(ENGINE_SOCKET):
        pytest.skip("the TLS front relays to the local engine's socket")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "server" / "server.pem", certs / "server" / "server-key.pem")
    ctx.load_verify_locations(certs / "server" / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(ENGINE_SOCKET)
        back = threading.Thread(target=_pipe, args=(engine, tls), daemon=True)
        back.start()
        _pipe(tls, engine)
        back.join()
        for s in (tls, engine):
            with contextlib.suppress(OSError):
                s.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    stop.set()
    listener.close()


def _tls_engine(port: int, cert_path: Path) -> Engine:
    env = {"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)}
    return Engine(resolve(environ=env))


async def test_engine_calls_and_plain_execs_work_over_tls(tls_front: int, certs: Path) -> None:
    engine = _tls_engine(tls_front, certs / "client")
    assert engine.endpoint.transport == "tcp+tls"
    version = await engine.call("engine version", lambda c: c.version())
    assert version["ApiVersion"]

    def run_one(c: Any) -> bytes:
        cid = c.api.create_container("bottle-mcp/worker:latest", ["sleep", "30"], user="1000")["Id"]
        try:
            c.api.start(cid)
            return bytes(c.api.exec_start(c.api.exec_create(cid, ["sh", "-c", "echo over-tls; id -u"])["Id"]))
        finally:
            c.api.remove_container(cid, force=True)

    assert await engine.call("exec over tls", run_one) == b"over-tls\n1000\n"


async def test_a_bottle_is_driven_through_an_engine_reached_over_tls(
    tls_front: int, certs: Path, example_manifest: Path, tmp_path: Path
) -> None:
    engine = _tls_engine(tls_front, certs / "client")
    assert engine.endpoint.transport == "tcp+tls"
    service = BottleService(
        ServiceConfig(manifest_path=example_manifest, cwd=tmp_path), DockerBackend(Instance.current(), engine)
    )
    try:
        plan = await service.prepare("worker")
        bid = (await service.launch(plan.plan_id)).bottle_id
        res = await service.exec(bid, "echo over-tls; id -u")
        assert res.stdout == "over-tls\n1000\n"
        res = await service.exec(bid, "sleep 300", timeout_s=1)
        assert res.timed_out
        assert [b.bottle_id for b in await service.list_active()] == [bid]
        await service.stop(bid)
    finally:
        await service.aclose()


async def test_a_certificate_of_another_ca_is_refused_with_the_tls_fix(tls_front: int, certs: Path) -> None:
    engine = _tls_engine(tls_front, certs / "stranger")
    with pytest.raises(EngineError) as caught:
        await engine.call("engine version", lambda c: c.version())
    assert "DOCKER_CERT_PATH" in str(caught.value)
