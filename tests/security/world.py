"""The "outside world" of the adversarial tests: runs inside a container the tests start.

    python3 world.py NAME [NAME...]

Generates a throw-away CA and a certificate for the names, prints the CA as
`CA-PEM <base64>` and then serves, recording every hit as a `HIT ...` line on stdout:
HTTPS on 443, HTTP on 80 and 8080, a TCP sink on 9999, and UDP sinks on 53 (DNS) and 9999.
HTTP answers `hello from NAME` with the Host header and the request's headers and body.
Uses only Debian's python3 and python3-cryptography (both in the egress-proxy image).
"""

import base64
import datetime
import http.server
import socket
import socketserver
import ssl
import sys
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = sys.argv[1:] or ["world.test"]


def hit(proto: str, port: int, peer: object, data: bytes) -> None:
    print(f"HIT {proto} {port} {peer} {data[:1000]!r}", flush=True)


def make_certs() -> tuple[bytes, bytes, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "world test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        port = self.server.server_address[1]
        hit("http", port, self.client_address[0], f"{self.command} {self.path} {dict(self.headers)}".encode() + body)
        text = f"hello from {NAMES[0]} host={self.headers.get('Host')} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = do_PUT = _answer

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Bytes that are not HTTP still count as a hit: they reached this host.
        hit("http-error", self.server.server_address[1], self.client_address[0], self.raw_requestline or b"")
        super().send_error(code, message, explain)

    def log_message(self, *args: object) -> None:
        return


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class TcpSink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(2)
        try:
            data = self.request.recv(200)
        except OSError:
            data = b""
        hit("tcp", self.server.server_address[1], self.client_address[0], data)


class UdpSink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        hit("udp", self.server.server_address[1], self.client_address[0], self.request[0])


def main() -> None:
    ca, leaf, key = make_certs()
    with open("/tmp/leaf.pem", "wb") as f:
        f.write(leaf + key)
    servers: list[socketserver.BaseServer] = []
    https = Server(("0.0.0.0", 443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain("/tmp/leaf.pem")
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    servers += [https, Server(("0.0.0.0", 80), Handler), Server(("0.0.0.0", 8080), Handler)]
    servers.append(socketserver.ThreadingTCPServer(("0.0.0.0", 9999), TcpSink))
    servers += [socketserver.ThreadingUDPServer(("0.0.0.0", p), UdpSink) for p in (53, 9999)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("CA-PEM " + base64.b64encode(ca).decode(), flush=True)
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    socket.setdefaulttimeout(5)
    main()
