"""A git host over HTTPS that takes a token, run in a container of the test's own.

    python3 git_https.py NAME [NAME...]     (EXPECT_TOKEN_SHA256 in the environment)

Serves `git http-backend` (smart HTTP: clone, fetch, push) for /srv/git/repo.git on 443
with a throw-away CA (printed as `CA-PEM <base64>`), then `READY`. Every request must
carry Basic auth whose password hashes to the expected token, else 401. Each request is
recorded as `HIT host method path auth=real|none|sha256:<hex>`: the token itself is never
printed. Debian's python3, python3-cryptography and git (all in the egress-proxy image).
"""

import base64
import datetime
import hashlib
import http.server
import os
import socketserver
import ssl
import subprocess
import sys
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = sys.argv[1:] or ["git.forge.test"]
EXPECTED = os.environ["EXPECT_TOKEN_SHA256"]
ROOT = "/srv/git"


def make_certs() -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "git host CA")])
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
    return ca.public_bytes(pem)


def make_repo() -> None:
    repo = f"{ROOT}/repo.git"
    work = "/tmp/seed"
    ident = ["-c", "user.name=Forge", "-c", "user.email=forge@example.invalid"]
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", repo], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", work], check=True)
    with open(f"{work}/README", "w") as f:
        f.write("seeded by the git host\n")
    subprocess.run(["git", "-C", work, "add", "README"], check=True)
    subprocess.run(["git", "-C", work, *ident, "commit", "-q", "-m", "seed"], check=True)
    subprocess.run(["git", "-C", work, "push", "-q", repo, "main"], check=True)
    subprocess.run(["git", "-C", repo, "config", "http.receivepack", "true"], check=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _auth(self) -> str:
        header = self.headers.get("Authorization") or ""
        if not header.lower().startswith("basic "):
            return "none"
        try:
            _user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return "none"
        digest = hashlib.sha256(password.encode()).hexdigest()
        return "real" if digest == EXPECTED else "sha256:" + digest

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not length and self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._chunked()
        auth = self._auth()
        path, _, query = self.path.partition("?")
        print(f"HIT {self.headers.get('Host')} {self.command} {path} auth={auth}", flush=True)
        if auth != "real":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "bottle",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = _handle

    def log_message(self, *args: object) -> None:
        return


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main() -> None:
    ca = make_certs()
    make_repo()
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
