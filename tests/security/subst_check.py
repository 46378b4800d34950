"""Runs inside the egress-proxy image: the real substitute.py on real mitmproxy requests and responses.

    python3 subst_check.py   (values in CHECK_* variables: this container is the test's, not a bottle's)

Prints one `CASE name result` line per case; the test compares them. Never prints a value.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import sys

sys.path.insert(0, "/opt/egress")

from mitmproxy import http
from substitute import CREDENTIALS_FILE, Substitutor

STAND_IN = os.environ["CHECK_STAND_IN"]
REAL = os.environ["CHECK_REAL"]
GIT_STAND_IN = os.environ["CHECK_GIT_STAND_IN"]
GIT_REAL = os.environ["CHECK_GIT_REAL"]

with open(CREDENTIALS_FILE, "w") as f:
    json.dump(
        [
            {"name": "MODEL_KEY", "stand_in": STAND_IN, "value": REAL, "hosts": ["api.model.test"], "body": False},
            {"name": "GIT_TOKEN", "stand_in": GIT_STAND_IN, "value": GIT_REAL, "hosts": ["*.model.test"], "body": True},
        ],
        f,
    )
sub = Substitutor()
print("CASE file-deleted", not os.path.exists(CREDENTIALS_FILE))
print("CASE loaded", sorted(c.name for c in sub.credentials))


def request(url: str, headers: dict[str, str] | None = None, body: bytes = b"", method: str = "POST") -> http.Request:
    return http.Request.make(method, url, body, headers or {})


def outcome(req: http.Request, host: str) -> str:
    why = sub.check(req, host)
    if why is not None:
        return "refused: " + why
    used = sub.apply(req, host)
    return "substituted " + ",".join(used) if used else "unchanged"


def has(data: bytes | str, value: str) -> bool:
    return value.encode() in (data if isinstance(data, bytes) else data.encode())


# The declared host: header substituted; the real value is what leaves.
r = request("https://api.model.test/v1/messages", {"x-api-key": STAND_IN})
print("CASE header-declared", outcome(r, "api.model.test"), r.headers["x-api-key"] == REAL)

# A bearer token inside a longer header value.
r = request("https://api.model.test/v1/messages", {"authorization": "Bearer " + STAND_IN})
print("CASE bearer-declared", outcome(r, "api.model.test"), r.headers["authorization"] == "Bearer " + REAL)

# Another host: refused, by name.
r = request("https://other.test/steal", {"x-api-key": STAND_IN})
print("CASE header-other-host", outcome(r, "other.test"))

# The stand-in in the URL, the method or a header name of the declared host: refused.
r = request(f"https://api.model.test/v1?key={STAND_IN}", {})
print("CASE url-declared", outcome(r, "api.model.test"))
r = request("https://other.test/v1?k=" + "".join(f"%{b:02x}" for b in STAND_IN.encode()), {})
print("CASE url-encoded-other-host", outcome(r, "other.test"))
r = request("https://api.model.test/v1", {})
r.method = STAND_IN  # as the bottle sent it (make() would upper-case it)
print("CASE method-declared", outcome(r, "api.model.test"))
r = request("https://api.model.test/v1", {"x-" + STAND_IN: "1"})
print("CASE header-name-declared", outcome(r, "api.model.test"))

# The body of the declared host: refused without body = true.
r = request("https://api.model.test/v1", {"content-type": "application/json"}, json.dumps({"k": STAND_IN}).encode())
print("CASE body-not-allowed", outcome(r, "api.model.test"))

# Git over HTTPS: Basic auth carries the stand-in base64-encoded; the body is allowed for this one.
basic = base64.b64encode(f"x-access-token:{GIT_STAND_IN}".encode()).decode()
r = request("https://git.model.test/repo.git/info/refs", {"authorization": "Basic " + basic}, method="GET")
print(
    "CASE basic-declared",
    outcome(r, "git.model.test"),
    base64.b64decode(r.headers["authorization"].split()[1]).decode() == f"x-access-token:{GIT_REAL}",
)
r = request("https://other.test/", {"authorization": "Basic " + basic}, method="GET")
print("CASE basic-other-host", outcome(r, "other.test"))
zipped = gzip.compress(b"token=" + GIT_STAND_IN.encode())
r = request("https://git.model.test/form", {"content-encoding": "gzip"})
r.raw_content = zipped  # as sent: already compressed
res = outcome(r, "git.model.test")
print("CASE gzip-body-declared", res, gzip.decompress(r.raw_content or b"") == b"token=" + GIT_REAL.encode())
r = request("https://other.test/form", {"content-encoding": "gzip"})
r.raw_content = zipped
print("CASE gzip-body-other-host", outcome(r, "other.test"))

# A real value coming from the bottle is refused anywhere, the declared host included.
r = request("https://api.model.test/v1", {"x-api-key": REAL})
print("CASE real-from-bottle", outcome(r, "api.model.test"))

# Nothing to do: no stand-in.
r = request("https://other.test/", {"accept": "*/*"}, b"hello")
print("CASE clean", outcome(r, "other.test"))

# Responses that echo the real value give the bottle the stand-in.
resp = http.Response.make(200, b'{"echo": "' + REAL.encode() + b'"}', {"x-echo": "key " + REAL})
sub.scrub_response(resp)
print(
    "CASE response-echo",
    has(resp.raw_content or b"", REAL),
    has(resp.raw_content or b"", STAND_IN),
    has(resp.headers["x-echo"], REAL),
)
resp = http.Response.make(200, b"", {"content-encoding": "gzip"})
resp.raw_content = gzip.compress(b"token " + GIT_REAL.encode())
sub.scrub_response(resp)
print("CASE response-gzip-echo", has(resp.get_content() or b"", GIT_REAL), has(resp.get_content() or b"", GIT_STAND_IN))
