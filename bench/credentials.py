"""Benchmark: what stand-ins cost. Launch of an egress bottle with and without a substituted credential,
and the proxy's per-request work, against its old scan of the same request, measured in the same run.

    .venv/bin/python -m bench.credentials [--samples N]

Launches alternate (with, without) so that a shared machine's load drift hits both sides. The
proxy figures run the real substitute.py and egress_addon.py inside the proxy image. Prints
medians and ratios. Everything it creates is labelled and removed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import docker

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.egress import EGRESS_IMAGE
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

MANIFEST = """
[bottles.net]
image = "bottle-mcp/worker:latest"
runtime = "runc"
network = "egress"

[bottles.net.egress]
allow = ["api.example.com"]

[bottles.net.egress.credentials]
BENCH_API_KEY = ["api.example.com"]

[agents.with]
bottle = "net"
command = ["true"]
credentials = ["BENCH_API_KEY"]

[agents.without]
bottle = "net"
command = ["true"]
"""

# Runs in the proxy image: per-request cost of the substitution (check + apply) against the
# addon's scan of one real credential (prefix, length, hash), on the same requests.
PROXY_BENCH = r"""
import hashlib, json, os, sys, time
sys.path.insert(0, "/opt/egress")
real = "sk-ant-api03-" + "R" * 95
stand_in = "sk-ant-api03-" + "S" * 95
with open(os.path.join(os.environ["HOME"], "credentials.json"), "w") as f:
    json.dump([{"name": "K", "stand_in": stand_in, "value": real, "hosts": ["api.example.com"], "body": True}], f)
os.environ["EGRESS_POLICY"] = json.dumps({"allow": [], "credentials": [{"name": "K", "prefix": real[:6],
    "length": len(real), "sha256": hashlib.sha256(real.encode()).hexdigest(), "hosts": ["api.example.com"]}]})
from mitmproxy import http
import egress_addon
addon = egress_addon.addons[0]
headers = {"x-api-key": stand_in, "content-type": "application/json", "anthropic-version": "2023-06-01",
           "user-agent": "claude-cli/2.1", "accept": "application/json", "x-stainless-lang": "js",
           "x-stainless-os": "Linux", "x-stainless-arch": "x64", "anthropic-beta": "a,b,c", "connection": "keep-alive"}
def make(size):
    return http.Request.make("POST", "https://api.example.com/v1/messages", b"x" * size, headers)
def old_scan(req):
    blobs = [req.url.encode(), bytes(req.raw_content or b"")]
    blobs += [f"{k}: {v}".encode() for k, v in req.headers.items(multi=True)]
    return addon.leaked_credentials("other.example.com", blobs)
def new(req):
    why = addon.substitutor.check(req, "api.example.com")
    assert why is None, why
    return addon.substitutor.apply(req, "api.example.com")
for size, n in ((4096, 3000), (1 << 20, 60)):
    for name, fn in (("old-scan", old_scan), ("substitute", new)):
        reqs = [make(size) for _ in range(n)]
        t = time.perf_counter()
        for r in reqs:
            fn(r)
        print(name, size, round((time.perf_counter() - t) / n * 1e6, 1))
"""


async def launch_times(samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.toml"
        path.write_text(MANIFEST)
        os.environ["BENCH_API_KEY"] = "sk-ant-api03-" + os.urandom(40).hex()
        service = BottleService(ServiceConfig(manifest_path=path, cwd=Path(d)), DockerBackend(Instance.current()))
        try:
            for _ in range(samples):
                for agent in ("with", "without"):
                    plan = await service.prepare(agent)
                    t = time.perf_counter()
                    launched = await service.launch(plan.plan_id)
                    times[agent].append(time.perf_counter() - t)
                    await service.stop(launched.bottle_id)
        finally:
            await service.aclose()
    return times


def proxy_costs() -> str:
    client = docker.from_env()
    try:
        out = client.containers.run(
            EGRESS_IMAGE,
            entrypoint=["python3", "-c", PROXY_BENCH],
            environment={"HOME": "/tmp"},
            labels=Instance.current().labels("sidecar", **{L.BOTTLE: "bench-credentials"}),
            network_mode="none",
            remove=True,
        )
        return str(out.decode())
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    times = anyio.run(launch_times, args.samples)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"launch of an egress bottle (runc, {args.samples} each, alternating), median seconds:")
    print(f"  with a substituted credential   {med['with']:.3f}")
    print(f"  without credentials             {med['without']:.3f}")
    print(f"  ratio                           {med['with'] / med['without']:.2f}x")
    rows: dict[tuple[str, str], float] = {}
    for line in proxy_costs().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("old-scan", "substitute"):
            rows[(parts[0], parts[1])] = float(parts[2])
    print("proxy work per request (microseconds; old-scan = the addon's scan for one real value):")
    for size in ("4096", str(1 << 20)):
        old, new = rows[("old-scan", size)], rows[("substitute", size)]
        print(f"  {int(size):>8} B body: old-scan {old:8.1f}  substitute {new:8.1f}  ratio {new / old:.2f}x")


if __name__ == "__main__":
    main()
