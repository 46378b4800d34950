"""The gate's scanner, in the gate's image: the shortcuts it takes lose no finding of detect-secrets.

The scanner hands a line to a detect-secrets plugin only when the text could match
it (see scan.Scanner). Here every plugin runs both ways, always and through those
gates, over lines that each plugin flags (one per kind of secret it knows) mixed
with code-like noise: the findings must be the same, and every kind must be found.
"""

from __future__ import annotations

import docker

from bottle_mcp import labels as L
from bottle_mcp.backends.docker.images import builtin_tag
from bottle_mcp.labels import Instance

CHECK = r"""
import base64, json, random, string, sys
sys.path.insert(0, "/opt/gate")
import scan
s = scan.Scanner([])
r = random.Random(7)
def rs(n, al=string.ascii_letters + string.digits): return "".join(r.choice(al) for _ in range(n))
def jwt(part): return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
corpus = [
 "AKIA" + rs(16, string.ascii_uppercase + "234567"),
 'aws_secret_access_key = "' + rs(40) + '"',
 "AKCp5" + rs(70), " AP6" + rs(20) + " ",
 "https://user:" + rs(12) + "@example.com/x",
 'password = "' + rs(14) + '"', "api_key: " + rs(20), 'my_secret="' + rs(10) + '"',
 "PASSWORD: " + rs(12), "contraseña = '" + rs(12) + "'",
 'x = "' + rs(44, string.ascii_letters + string.digits + "+/") + '=="',
 "y = '" + rs(32, "0123456789abcdef") + "'",
 jwt({"alg": "HS256", "typ": "JWT"}) + "." + jwt({"sub": rs(10)}) + "." + rs(43),
 "xoxb-" + rs(11, string.digits) + "-" + rs(12, string.digits) + "-" + rs(24, string.ascii_lowercase + string.digits),
 "https://hooks.slack.com/services/T" + rs(8, string.ascii_uppercase) + "/B" + rs(8, string.ascii_uppercase)
 + "/" + rs(24),
 "sk_live_" + rs(24), "rk_live_" + rs(24), "SK" + rs(32, "0123456789abcdef"), "AC" + rs(32, "0123456789abcdef"),
 "sq0csp-" + rs(43), "sq0atp-" + rs(22), rs(32, "0123456789abcdef") + "-us12",
 "SG." + rs(22) + "." + rs(43), "//registry.npmjs.org/:_authToken=" + rs(36, "0123456789abcdef-"),
 "pypi-AgEIcHlwaS5vcmc" + rs(70), "glpat-" + rs(20), "ghp_" + rs(36), "gho_" + rs(36),
 "sk-" + rs(20) + "T3BlbkFJ" + rs(20), "M" + rs(23) + "." + rs(6) + "." + rs(27),
 rs(10, string.digits) + ":AA" + rs(33), "cloudant_password='" + rs(64, "0123456789abcdef") + "'",
 "https://" + rs(8) + ":" + rs(64, "0123456789abcdef") + "@" + rs(8) + ".cloudant.com",
 "ibm_cloud_iam_key = '" + rs(44) + "'", "softlayer_api_key = '" + rs(64, "0123456789abcdef") + "'",
 "AccountKey=" + rs(86) + "==", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN OPENSSH PRIVATE KEY-----",
 "secret_access_key = '" + rs(40) + "'", "ibm-cos hmac secret_access_key: " + rs(48, "0123456789abcdef"),
]
noise = [f'    v_{i} = f("{rs(8)}", {i})  # key {rs(5)}' for i in range(200)]
def ungated(text):
    out = set()
    for n, line in enumerate(text.split("\n"), 1):
        for plugin, _g in s.plugins:
            for sec in plugin.analyze_line(filename="a.py", line=line, line_number=0):
                out.add((n, str(sec.type), sec.secret_value))
    return out
def gated(text):
    act = [(p, g) for p, g in s.plugins if g is None or g.search(text)]
    out = set()
    for n, line in enumerate(text.split("\n"), 1):
        for plugin, g in act:
            if g is not None and not g.search(line): continue
            for sec in plugin.analyze_line(filename="a.py", line=line, line_number=0):
                out.add((n, str(sec.type), sec.secret_value))
    return out
texts = ["\n".join(corpus), "\n".join(noise), *corpus, "\n".join(noise[:50] + corpus + noise[50:])]
total = 0
for t in texts:
    a, b = ungated(t), gated(t)
    assert a == b, (a - b, b - a)
    total += len(a)
types = {x[1] for x in ungated("\n".join(corpus))}
print("equal on", len(texts), "texts,", total, "findings;", len(types), "types:", sorted(types))
print("gates:", {type(p).__name__: (g is not None) for p, g in s.plugins})
"""


def test_the_scanners_shortcuts_lose_no_finding(docker_client: docker.DockerClient) -> None:
    container = docker_client.containers.create(
        builtin_tag("git-gate"),
        entrypoint=["/opt/gate/venv/bin/python", "-c", CHECK],
        network_mode="none",
        labels=Instance.current().labels("sidecar", **{f"{L.PREFIX}.test": "gate-scanner"}),
    )
    try:
        container.start()
        code = container.wait(timeout=300)["StatusCode"]
        out = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code == 0, out
    assert "26 types" in out, out
