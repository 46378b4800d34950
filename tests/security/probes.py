"""What the hostile agent runs inside a bottle: `python3 - PROBE ARGS...` with this file on stdin.

Only the standard library (the bottle has Debian's python3). Each probe prints
plain lines the tests parse; none of them sends anything anywhere but the
bottle's loopback and the test's own containers.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import urllib.request
from collections.abc import Iterator

PROXY = ("127.0.0.1", 3128)


def raw_proxy(request: str, tls_host: str = "") -> None:
    """Send one raw request to the proxy; print its status line (and, in a tunnel, the inner one)."""
    s = socket.create_connection(PROXY, timeout=20)
    s.sendall(request.replace("\\r\\n", "\r\n").encode())
    head = s.recv(4096).split(b"\r\n")[0].decode(errors="replace")
    if tls_host and " 200 " in head:
        t = ssl.create_default_context().wrap_socket(s, server_hostname=tls_host)
        t.sendall(f"GET /tunnel HTTP/1.1\r\nHost: {tls_host}\r\nConnection: close\r\n\r\n".encode())
        head += " | " + t.recv(4096).split(b"\r\n")[0].decode(errors="replace")
    print(head)


def fetch(url: str) -> None:
    """A well-behaved client: urllib honours HTTPS_PROXY and SSL_CERT_FILE."""
    try:
        print(urllib.request.urlopen(url, timeout=20).read().decode())
    except Exception as e:
        print(f"ERROR {e}")


def post_credential(url: str, env_name: str) -> None:
    req = urllib.request.Request(url, data=("token=" + os.environ[env_name]).encode())
    try:
        print(urllib.request.urlopen(req, timeout=20).status)
    except Exception as e:
        print(f"ERROR {e}")


def tunnel_with_ca(host: str, ca_pem: str) -> None:
    """CONNECT to host and verify its certificate against ca_pem only."""
    with open("/tmp/only-ca.pem", "w") as f:
        f.write(ca_pem)
    s = socket.create_connection(PROXY, timeout=20)
    s.sendall(f"CONNECT {host}:443 HTTP/1.1\r\n\r\n".encode())
    if b" 200 " not in s.recv(4096):
        print("CONNECT refused")
        return
    try:
        t = ssl.create_default_context(cafile="/tmp/only-ca.pem").wrap_socket(s, server_hostname=host)
        t.sendall(f"GET /pinned HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := t.recv(4096):
            data += chunk
        print(data.decode(errors="replace"))
    except ssl.SSLError as e:
        print(f"TLS ERROR {e}")


def raw_tunnel(host: str, port: str) -> None:
    s = socket.create_connection(PROXY, timeout=20)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
    print(s.recv(4096).split(b"\r\n")[0])
    s.sendall(b"\x00\x01raw-tunnel-payload\n" * 4)
    s.settimeout(10)
    try:
        print("answer", s.recv(4096))
    except OSError as e:
        print("closed", type(e).__name__)


def _tcp(addr: str, port: int, family: int = socket.AF_INET) -> str:
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((addr, port))
        s.sendall(b"tcp-leak")
        return "OPEN"
    except OSError as e:
        return type(e).__name__


def _udp(addr: str, port: int) -> str:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"udp-leak", (addr, port))
        return "SENT"
    except OSError as e:
        return type(e).__name__


def _lookup(name: str) -> str:
    try:
        return "RESOLVED " + socket.gethostbyname(name)
    except OSError as e:
        return type(e).__name__


def no_proxy_escape(sink_ip: str, gateway: str, host_port: str, nonce: str) -> None:
    """Everything an agent ignoring the proxy variables would try."""
    print("tcp", _tcp(sink_ip, 9999))
    print("tcp80", _tcp(sink_ip, 80))
    print("udp", _udp(sink_ip, 9999))
    print("dns53", _udp(sink_ip, 53))
    print("v6", _tcp("::ffff:" + sink_ip, 9999, socket.AF_INET6))
    print("gateway", _tcp(gateway, int(host_port)))
    print("lookup", _lookup(nonce))
    print("lookup-allowed", _lookup("allowed.test"))
    with open("/proc/net/dev") as f:
        print("ifaces", ",".join(sorted(line.split(":")[0].strip() for line in f.readlines()[2:])))
    v6 = "/proc/net/if_inet6"
    names = []
    if os.path.exists(v6):
        with open(v6) as f:
            names = [line.split()[-1] for line in f]
    print("v6addrs", ",".join(names))


def fork_until_refused(limit: str) -> None:
    """A bounded fork bomb: fork sleeping children until the kernel refuses; report how many."""
    children = []
    refused = "no"
    for _ in range(int(limit)):
        try:
            pid = os.fork()
        except OSError as e:
            refused = type(e).__name__
            break
        if pid == 0:
            try:
                os.execv("/bin/sleep", ["sleep", "30"])  # small: the bomb is bounded by pids, not memory
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, 9)
    for pid in children:
        os.waitpid(pid, 0)
    print("forked", len(children), "refused", refused)


def no_new_privs() -> None:
    import ctypes

    print("no_new_privs", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS


def allocate(megabytes: str) -> None:
    blocks = [bytearray(1024 * 1024) for _ in range(int(megabytes))]
    print("allocated", len(blocks))


def send_header(url: str, env_name: str, header: str, scheme: str = "") -> None:
    """Send the variable's value (whatever the bottle holds) in a header; print the status."""
    value = os.environ[env_name]
    if scheme == "basic":
        import base64

        value = "Basic " + base64.b64encode(f"x-access-token:{value}".encode()).decode()
    elif scheme:
        value = f"{scheme} {value}"
    req = urllib.request.Request(url, headers={header: value})
    try:
        print(urllib.request.urlopen(req, timeout=20).status)
    except Exception as e:
        print(f"ERROR {e}")


def _windows(data: bytes, prefix: bytes, length: int, digests: dict[str, str], found: dict[str, int]) -> None:
    import hashlib

    start = data.find(prefix)
    while start != -1:
        digest = hashlib.sha256(data[start : start + length]).hexdigest()
        for label, want in digests.items():
            if digest == want:
                found[label] += 1
        start = data.find(prefix, start + 1)


def _process_blobs() -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every process's environment and command line."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    yield f"/proc/{pid}/{part}", f.read()
            except OSError:
                pass


def _file_blobs() -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every readable regular file up to 256 MiB, outside /proc, /sys and /dev."""
    for top in sorted(set(os.listdir("/")) - {"proc", "sys", "dev"}):
        for dirpath, _dirs, filenames in os.walk("/" + top):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 256 << 20:
                        continue
                    with open(path, "rb") as f:
                        yield path, f.read()
                except OSError:
                    pass


def find_secret(prefix: str, length: str, *labelled: str) -> None:
    """Look for values (known here only by prefix, length and SHA-256) in every process's environment
    and command line and in every readable file; print `label count where...` per value.

    The values themselves never enter the bottle for this: only their hashes do.
    """
    digests = dict(item.split("=", 1) for item in labelled)
    found = dict.fromkeys(digests, 0)
    where: dict[str, list[str]] = {label: [] for label in digests}
    files = 0
    for kind, blobs in (("proc", _process_blobs()), ("file", _file_blobs())):
        for path, data in blobs:
            files += kind == "file"
            before = dict(found)
            _windows(data, prefix.encode(), int(length), digests, found)
            for label in digests:
                if found[label] != before[label]:
                    where[label].append(path)
    print("files", files)
    for label in digests:
        print(label, found[label], " ".join(where[label][:50]))


def _tunnel(host: str) -> ssl.SSLSocket | None:
    """CONNECT to host:443 and start TLS, trusting the proxy's CA (SSL_CERT_FILE); None if refused."""
    s = socket.create_connection(PROXY, timeout=20)
    s.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    head = s.recv(4096).split(b"\r\n")[0]
    if b" 200 " not in head:
        print("CONNECT", head.decode(errors="replace"))
        return None
    return ssl.create_default_context().wrap_socket(s, server_hostname=host)


def tunnel_request(host: str, env_name: str, request: str) -> None:
    """Send one raw HTTP/1.1 request in an intercepted tunnel; SECRET in it becomes the credential's value."""
    t = _tunnel(host)
    if t is None:
        return
    t.sendall(request.replace("\\r\\n", "\r\n").replace("SECRET", os.environ[env_name]).encode())
    print(t.recv(4096).split(b"\r\n")[0].decode(errors="replace"))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
