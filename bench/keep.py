"""Benchmark of kept bottles: what keeping costs at launch and how fast the server leaves.

    .venv/bin/python -m bench.keep [--rounds N]

Alternates, round by round, a server with `keep_for = "0"` (the baseline: no reaper) and one that
keeps (`keep_for = "60s"`), each launching one bottle over stdio (raw JSON-RPC); prints the median
launch time of each and their ratio. Then stops servers holding three bottles with the host's
signal sequence (SIGINT, SIGTERM 100 ms later, SIGKILL 500 ms after the SIGINT) with
`--on-exit keep` and `--on-exit remove`, and prints how long each took to exit and whether the
SIGKILL was needed. Everything is labelled and removed at the end (its own state folder's
bottles through `bottle-mcp stop --all`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MANIFEST = """\
[host]
keep_for = "{keep_for}"
approve = "never"
skills_dir = "{folder}"

[bottles.offline]
image = "bottle-mcp/worker:latest"

[agents.worker]
bottle = "offline"
command = ["true"]
"""


class Server:
    def __init__(self, manifest: Path, env: dict[str, str], *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bottle_mcp", "serve", "--manifest", str(manifest), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        self.n = 0
        self.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        self.send({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            msg = json.loads(self.proc.stdout.readline())
            if msg.get("id") == self.n:
                return msg  # type: ignore[no-any-return]

    def tool(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        res = self.call("tools/call", {"name": name, "arguments": args})["result"]
        assert not res.get("isError"), res
        return res["structuredContent"]  # type: ignore[no-any-return]

    def launch(self) -> float:
        plan = self.tool("prepare_bottle", {"agent": "worker"})
        started = time.perf_counter()
        self.tool("launch_bottle", {"plan_id": plan["plan_id"]})
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def host_signals(self) -> tuple[float, bool]:
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.perf_counter() - started < 0.5:
            time.sleep(0.002)
        killed = self.proc.poll() is None
        if killed:
            self.proc.kill()
        self.proc.wait()
        return (time.perf_counter() - started) * 1000, killed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-keep-") as tmp:
        folder = Path(tmp)
        env = {"XDG_STATE_HOME": str(folder / "state")}
        plain = folder / "plain.toml"
        plain.write_text(MANIFEST.format(keep_for="0", folder=folder))
        kept = folder / "kept.toml"
        kept.write_text(MANIFEST.format(keep_for="60s", folder=folder))
        try:
            times: dict[str, list[float]] = {"keep_for=0": [], "keep_for=60s": []}
            for _ in range(args.rounds):
                for label, manifest, on_exit in (("keep_for=0", plain, "remove"), ("keep_for=60s", kept, "remove")):
                    server = Server(manifest, env, "--on-exit", on_exit)
                    times[label].append(server.launch())
                    server.close()
            base = statistics.median(times["keep_for=0"])
            for label, samples in times.items():
                med = statistics.median(samples)
                print(f"launch {label:<13} median {med:7.0f} ms  ratio {med / base:4.2f}x  ({len(samples)} runs)")
            for on_exit in ("keep", "remove"):
                took = []
                kills = 0
                for _ in range(max(1, args.rounds // 2)):
                    server = Server(kept, env, "--on-exit", on_exit)
                    for _ in range(3):
                        server.launch()
                    ms, killed = server.host_signals()
                    took.append(ms)
                    kills += killed
                print(
                    f"exit on the host's signals, --on-exit {on_exit:<6} with 3 bottles: median "
                    f"{statistics.median(took):4.0f} ms, SIGKILL needed {kills} of {len(took)}"
                )
        finally:
            subprocess.run(
                [sys.executable, "-m", "bottle_mcp", "stop", "--all"],
                env={**os.environ, **env},
                capture_output=True,
                check=False,
            )


if __name__ == "__main__":
    main()
