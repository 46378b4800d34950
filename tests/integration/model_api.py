"""A scripted stand-in of the Messages API, run in a container of the test's own.

    python3 model_api.py NAME [NAME...]     (EXPECT_KEY_SHA256 in the environment)

Serves HTTPS on 443 with a throw-away CA (printed as `CA-PEM <base64>`), then `READY`.
Every request is recorded as one line `HIT host method path key=real|none|sha256:<hex>`:
the key (x-api-key, or a Bearer token) is compared by hash with the expected one, so the
real value is never printed. With the right key, `POST /v1/messages` answers with a
scripted reply (streamed as server-sent events when asked), `count_tokens` with a count;
with any other key, 401 as the real API would. Debian's python3 and python3-cryptography
only (both in the egress-proxy image).
"""

import base64
import datetime
import hashlib
import http.server
import json
import os
import socketserver
import ssl
import sys
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = sys.argv[1:] or ["api.model.test"]
EXPECTED = os.environ["EXPECT_KEY_SHA256"]
REPLY = os.environ.get("REPLY_TEXT", "Hello from the stand-in model.")


def make_certs() -> tuple[bytes, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model stand-in CA")])
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
    with open("/tmp/leaf.pem", "wb") as f:
        f.write(leaf.public_bytes(pem) + key_pem)
    return ca.public_bytes(pem), b""


def sse(events: list[dict]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def message(model: str) -> dict:
    return {
        "id": "msg_standin_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _key(self) -> str:
        value = self.headers.get("x-api-key")
        auth = self.headers.get("authorization") or ""
        if value is None and auth.lower().startswith("bearer "):
            value = auth[7:]
        if value is None:
            return "none"
        digest = hashlib.sha256(value.encode()).hexdigest()
        return "real" if digest == EXPECTED else "sha256:" + digest

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        key = self._key()
        path = self.path.split("?")[0]
        print(f"HIT {self.headers.get('Host')} {self.command} {path} key={key}", flush=True)
        if self.command == "HEAD" or (self.command == "GET" and path == "/"):
            self._send(200, b"")
            return
        if key != "real":
            err = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
            self._send(401, json.dumps(err).encode())
            return
        body = json.loads(raw or b"{}")
        if path == "/v1/messages/count_tokens":
            self._send(200, json.dumps({"input_tokens": 100}).encode())
            return
        if path != "/v1/messages":
            self._send(404, json.dumps({"type": "error", "error": {"type": "not_found_error"}}).encode())
            return
        model = str(body.get("model", "claude-standin"))
        if not body.get("stream"):
            done = message(model)
            done.update(content=[{"type": "text", "text": REPLY}], stop_reason="end_turn")
            self._send(200, json.dumps(done).encode())
            return
        events = [
            {"type": "message_start", "message": message(model)},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": REPLY}},
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
            {"type": "message_stop"},
        ]
        self._send(200, sse(events), "text/event-stream")

    do_GET = do_POST = do_HEAD = _handle

    def log_message(self, *args: object) -> None:
        return


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main() -> None:
    ca, _ = make_certs()
    https = Server(("0.0.0.0", 443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain("/tmp/leaf.pem")
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    threading.Thread(target=https.serve_forever, daemon=True).start()
    print("CA-PEM " + base64.b64encode(ca).decode(), flush=True)
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
