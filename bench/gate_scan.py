"""Benchmark: what the git gate's secret scan costs on a clean 50 MB push.

    .venv/bin/python -m bench.gate_scan [--mb 50] [--samples 3] [--json FILE]

Runs in one container of the gate's own image (its git, its Python, detect-secrets),
with no network. A work repository gets about 50 MB of generated source-like text
(seeded: the same bytes every run) in one commit; each sample pushes it, over git's
local transport (receive-pack with its quarantine, as in the gate), into a fresh
bare repository without a hook and into one whose pre-receive hook is the gate's
scan (`scan.scan_refs` + `scan.scan_push` with the gate's scanner), alternating.
Prints both times, the scan's own time as the hook measured it, and the ratio.
The push to the upstream that the gate adds after a clean scan is not part of
either side. Everything it creates is labelled and removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import docker

from bottle_mcp import labels as L
from bottle_mcp.backends.docker.images import builtin_tag
from bottle_mcp.labels import Instance

INSIDE = r"""
import json, os, random, subprocess, sys, time
MB, SAMPLES = int(sys.argv[1]), int(sys.argv[2])
W = "/bench"
GIT = ["git", "-c", "user.name=b", "-c", "user.email=b@example.invalid", "-c", "init.defaultBranch=main"]

def run(*argv, cwd=W):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)

HOOK = '''import json, os, sys, time
from pathlib import Path
sys.path.insert(0, "/opt/gate")
import scan
t = time.monotonic()
updates = [tuple(line.split(" ", 2)) for line in sys.stdin.read().splitlines()]
scanner = scan.Scanner([])
result = scan.scan_refs(updates, scanner)
scan.scan_push(Path(os.environ.get("GIT_DIR", ".")).resolve(), result, scanner)
Path("/bench/hook.json").write_text(json.dumps({
    "seconds": time.monotonic() - t, "scan_seconds": result.seconds, "bytes": result.scanned_bytes,
    "objects": result.counts, "findings": [f.describe() for f in result.findings][:5]}))
sys.exit(1 if result.findings else 0)
'''

rng = random.Random(20261201)
words = ("alpha beta gamma delta value result config name index count item buffer stream token "
         "parser render widget layout session cache_key make_key request response handler").split()
os.makedirs(W + "/tree")
run(*GIT, "init", "-q", "tree")
target = MB * 1000 * 1000
size = 0
n = 0
while size < target:
    lines = []
    for i in range(1500):
        a, b, c = rng.choice(words), rng.choice(words), rng.choice(words)
        kind = rng.random()
        if kind < 0.45:
            lines.append(f'    {a}_{i} = {b}("{c} {a}", {rng.randint(0, 99999)})')
        elif kind < 0.6:
            lines.append(f"    # {a} {b} {c}: {rng.choice(words)} the {rng.choice(words)}")
        elif kind < 0.8:
            lines.append(f"def {a}_{b}_{i}({c}, {rng.choice(words)}={rng.randint(0, 9)}):")
        else:
            lines.append(f"        return {a}.{b}({c}) + {rng.randint(0, 999)}")
    text = "\n".join(lines) + "\n"
    d = f"{W}/tree/pkg{n // 100}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/mod_{n}.py", "w") as f:
        f.write(text)
    size += len(text)
    n += 1
run("git", "add", ".", cwd=W + "/tree")
run(*GIT, "commit", "-qm", "generated", cwd=W + "/tree")

def push(with_scan, k):
    bare = f"{W}/{'scan' if with_scan else 'plain'}-{k}.git"
    run("git", "init", "-q", "--bare", bare)
    if with_scan:
        with open(bare + "/hooks/pre-receive", "w") as f:
            f.write("#!/bin/sh\nexec /opt/gate/venv/bin/python /bench/hook.py\n")
        os.chmod(bare + "/hooks/pre-receive", 0o755)
    t = time.perf_counter()
    proc = subprocess.run(["git", "push", "-q", bare, "main"], cwd=W + "/tree", capture_output=True, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"push failed: {proc.stderr[-2000:]}")
    subprocess.run(["rm", "-rf", bare], check=True)
    if with_scan and not os.path.exists(W + "/hook.json"):
        raise SystemExit("the scan hook did not run")
    return took

with open(W + "/hook.py", "w") as f:
    f.write(HOOK)
out = {"files": n, "bytes": size, "plain_s": [], "scan_s": [], "hook": []}
for k in range(SAMPLES):
    out["plain_s"].append(push(False, k))
    out["scan_s"].append(push(True, k))
    out["hook"].append(json.load(open(W + "/hook.json")))
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    client = docker.from_env()
    image = builtin_tag("git-gate")
    labels = Instance.current().labels("sidecar", **{f"{L.PREFIX}.bench": "gate-scan"})
    container = client.containers.create(
        image,
        entrypoint=["/opt/gate/venv/bin/python", "-c", INSIDE, str(args.mb), str(args.samples)],
        labels=labels,
        network_mode="none",
        read_only=True,
        tmpfs={"/bench": "rw,exec,size=1g,uid=10102,gid=10102,mode=0700"},
        mem_limit=2 * 1024**3,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
    )
    try:
        container.start()
        code = container.wait(timeout=3600)["StatusCode"]
        output = container.logs(stdout=True, stderr=False).decode()
        if code != 0:
            print(container.logs(stderr=True).decode()[-3000:], file=sys.stderr)
            return 1
    finally:
        container.remove(force=True)
        client.close()
    data = json.loads(output.strip().splitlines()[-1])
    plain, scanned = statistics.median(data["plain_s"]), statistics.median(data["scan_s"])
    hook = statistics.median(h["scan_seconds"] for h in data["hook"])
    mb = data["bytes"] / 1e6
    print(f"clean push of {mb:.1f} MB ({data['files']} files, one commit), {len(data['plain_s'])} samples, median:")
    print(f"  without the scan  {plain:7.2f} s")
    print(f"  with the scan     {scanned:7.2f} s   ({scanned / plain:.1f} x; the scan itself {hook:.2f} s,")
    print(f"                                   {mb / hook:.2f} MB/s, objects {data['hook'][0]['objects']})")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
