"""Benchmark: bottle-mcp through MCP (stdio, the SDK's client) against raw engine baselines taken in the same run.

    .venv/bin/python -m bench.run [--quick] [--json FILE] [--runtime auto|runc|runsc]

Measures launch (cold and from a warm pool) against docker-py create+start of the same image
and runtime, and the exec round trip against docker-py exec_run, sample by sample in
alternation, so that a shared machine's load drift hits both sides; the exec round trip
against the `docker exec` CLI; cp_in of 1 MiB and 50 MiB against put_archive; exec p50/p95
with 1 and with 50 live bottles; 20 and 50 launches in parallel; the server's resident memory.
Prints medians, p95s and ratios.
Everything it creates is labelled and removed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import docker
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from bottle_mcp import labels as L
from bottle_mcp.labels import Instance

IMAGE = "bottle-mcp/worker:latest"
ME = Instance.current()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_ms": round(statistics.median(xs), 2), "p95_ms": round(pct(xs, 0.95), 2)}


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def atimed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def ok(result: CallToolResult) -> dict[str, Any]:
    if result.is_error or not isinstance(result.structured_content, dict):
        raise RuntimeError(" ".join(c.text for c in result.content if isinstance(c, TextContent)))
    return result.structured_content


# -- baselines ------------------------------------------------------------------


class Raw:
    def __init__(self, runtime: str) -> None:
        self.client = docker.from_env(max_pool_size=64)
        self.runtime = runtime

    def create_start(self) -> str:
        c = self.client.api.create_container(
            IMAGE,
            command=["sleep", "infinity"],
            labels=ME.labels("bottle", **{L.BOTTLE: "bench-raw"}),
            host_config=self.client.api.create_host_config(init=True, network_mode="none", runtime=self.runtime),
        )
        self.client.api.start(c["Id"])
        return str(c["Id"])

    def remove(self, cid: str) -> None:
        self.client.api.remove_container(cid, force=True)


def tar_of(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("blob")
        info.size = size
        tf.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def baselines(raw: Raw, n: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    ids: list[str] = []
    try:
        res["create_start"] = summary(timed(lambda: ids.append(raw.create_start()), n))
        cid = ids[0]
        c = raw.client.containers.get(cid)
        res["exec_run"] = summary(timed(lambda: c.exec_run(["true"]), n * 2))
        res["docker_exec_cli"] = summary(
            timed(lambda: subprocess.run(["docker", "exec", cid, "true"], check=True, capture_output=True), n * 2)
        )
        for label, size in (("1MiB", 1 << 20), ("50MiB", 50 << 20)):
            data = tar_of(size)
            res[f"put_archive_{label}"] = summary(timed(partial(c.put_archive, "/workspace", data), 5))
        for k in (20, 50):
            started: list[str] = []
            ts = time.perf_counter()

            def one(started: list[str] = started) -> None:
                started.append(raw.create_start())

            threads = [threading.Thread(target=one) for _ in range(k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            res[f"parallel_create_start_{k}_s"] = round(time.perf_counter() - ts, 2)
            ids += started
            for cid2 in started:
                raw.remove(cid2)
            ids = [i for i in ids if i not in started]
    finally:
        for cid in ids:
            raw.remove(cid)
    return res


# -- through MCP ----------------------------------------------------------------


# Set by --without-disk-and-reaper: serve with no reaper per bottle (the manifest then has no disk limit).
SERVE_EXTRA: list[str] = []


def server_params(manifest: Path, cwd: Path, warm: int) -> StdioServerParameters:
    env = {k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(manifest), "--warm-pool", str(warm), *SERVE_EXTRA],
        env=env,
        cwd=str(cwd),
    )


def server_rss_mb() -> float:
    """Resident memory of this process's `bottle_mcp serve` child, in MB."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == me and b"bottle_mcp\0serve" in cmd:
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def launch(client: Client) -> tuple[str, float]:
    plan = ok(await client.call_tool("prepare_bottle", {"agent": "bench"}))
    t = time.perf_counter()
    bid = ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]
    return str(bid), (time.perf_counter() - t) * 1000


async def stop_all(client: Client, ids: list[str]) -> None:
    async with anyio.create_task_group() as tg:
        for bid in ids:
            tg.start_soon(client.call_tool, "stop_bottle", {"bottle_id": bid})
    ids.clear()


async def exec_lat(client: Client, bid: str, n: int) -> list[float]:
    return await atimed(lambda: client.call_tool("exec", {"bottle_id": bid, "command": "true"}), n)


async def raw_create_start_ms(raw: Raw) -> float:
    t = time.perf_counter()
    cid = await anyio.to_thread.run_sync(raw.create_start)
    ms = (time.perf_counter() - t) * 1000
    await anyio.to_thread.run_sync(raw.remove, cid)
    return ms


async def mcp_cold(manifest: Path, cwd: Path, n: int, quick: bool, raw: Raw) -> dict[str, Any]:
    """Headline series alternate with their baseline, sample by sample, so that load drift hits both."""
    res: dict[str, Any] = {}
    ids: list[str] = []
    async with Client(server_params(manifest, cwd, 0), mode="legacy") as client:
        res["rss_idle_mb"] = server_rss_mb()
        lat, base = [], []
        for _ in range(n):
            base.append(await raw_create_start_ms(raw))
            bid, ms = await launch(client)
            lat.append(ms)
            await client.call_tool("stop_bottle", {"bottle_id": bid})
        res["launch_cold"] = summary(lat)
        res["paired_create_start_cold"] = summary(base)
        bid, _ = await launch(client)
        ids.append(bid)
        await exec_lat(client, bid, 5)  # warm-up
        cid = await anyio.to_thread.run_sync(raw.create_start)
        try:
            c = raw.client.containers.get(cid)
            lat, base = [], []
            for _ in range(n * 2):
                base += await anyio.to_thread.run_sync(timed, lambda: c.exec_run(["true"]), 1)
                lat += await exec_lat(client, bid, 1)
        finally:
            await anyio.to_thread.run_sync(raw.remove, cid)
        res["exec_1_bottle"] = summary(lat)
        res["paired_exec_run"] = summary(base)
        for label, size in (("1MiB", 1 << 20), ("50MiB", 50 << 20)):
            (cwd / label).write_bytes(os.urandom(size))
            args = {"bottle_id": bid, "host_path": label, "bottle_path": f"/workspace/{label}"}
            res[f"cp_in_{label}"] = summary(await atimed(partial(client.call_tool, "cp_in", args), 5))
        live = 10 if quick else 50

        async def add() -> None:
            ids.append((await launch(client))[0])

        async with anyio.create_task_group() as tg:
            for _ in range(live - 1):
                tg.start_soon(add)
        res["live_bottles"] = live
        res[f"exec_{live}_bottles"] = summary(await exec_lat(client, bid, n * 5))
        t = time.perf_counter()
        ok(await client.call_tool("list_active", {}))
        res[f"list_active_{live}_ms"] = round((time.perf_counter() - t) * 1000, 2)
        res[f"rss_{live}_bottles_mb"] = server_rss_mb()
        await stop_all(client, ids)
        for k in (20,) if quick else (20, 50):
            t = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(k):
                    tg.start_soon(add)
            res[f"parallel_launch_{k}_s"] = round(time.perf_counter() - t, 2)
            await stop_all(client, ids)
        res["rss_end_mb"] = server_rss_mb()
    return res


async def mcp_warm(manifest: Path, cwd: Path, n: int, raw: Raw) -> dict[str, Any]:
    ids: list[str] = []
    async with Client(server_params(manifest, cwd, n), mode="legacy") as client:
        me = ok(await client.call_tool("list_active", {}))["this_server"]
        flt = {"label": [f"{L.INSTANCE}={me}", f"{L.POOL}=warm"], "name": ["bottle-mcp.warm."], "status": ["running"]}
        with anyio.fail_after(300):
            while len(raw.client.api.containers(filters=flt)) < n:  # noqa: ASYNC110 - polling the engine
                await anyio.sleep(0.2)
        lat, base = [], []
        for _ in range(n):
            base.append(await raw_create_start_ms(raw))
            bid, ms = await launch(client)
            lat.append(ms)
            ids.append(bid)
        await stop_all(client, ids)
    return {"launch_warm": summary(lat), "paired_create_start_warm": summary(base)}


def machine() -> dict[str, Any]:
    info = docker.from_env().info()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "?",
    )
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(info.get("MemTotal", 0) / 1024**3, 1),
        "kernel": platform.release(),
        "engine": info.get("ServerVersion"),
        "runtimes": sorted((info.get("Runtimes") or {}).keys()),
        "load_avg_at_start": [round(x, 2) for x in load],
        "other_containers_running": info.get("ContainersRunning"),
        "python": platform.python_version(),
    }


MANIFEST = """\
[host]
max_bottles = 200
approve = "never"  # a pinned runtime counts as elevated; nobody is there to answer

[bottles.bench]
image = "{image}"
runtime = "{runtime}"

[bottles.bench.resources]
memory = "256m"
{disk_line}
[agents.bench]
bottle = "bench"
command = ["true"]
prompt = "benchmark"
"""


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n = 5 if args.quick else 20
    runtimes = set(docker.from_env().info().get("Runtimes") or {})
    runtime = args.runtime
    effective = ("runsc" if "runsc" in runtimes else "runc") if runtime == "auto" else runtime
    raw = Raw(effective)
    with tempfile.TemporaryDirectory(prefix="bottle-bench-") as tmp:
        cwd = Path(tmp)
        manifest = cwd / "bench.toml"
        disk_line = 'disk = "unlimited"\n' if args.without_disk_and_reaper else ""
        manifest.write_text(MANIFEST.format(image=IMAGE, runtime=runtime, disk_line=disk_line))
        if args.without_disk_and_reaper:
            SERVE_EXTRA[:] = ["--keep-for", "0"]
        print(f"[bench] runtime {effective}, {n} samples per series{' (quick)' if args.quick else ''}", file=sys.stderr)
        result: dict[str, Any] = {
            "machine": machine(),
            "runtime": effective,
            "quick": args.quick,
            "disk_limit_and_reaper": not args.without_disk_and_reaper,
        }
        print("[bench] baselines (docker-py, docker CLI)", file=sys.stderr)
        result["raw"] = await anyio.to_thread.run_sync(baselines, raw, n)
        print("[bench] through MCP, cold", file=sys.stderr)
        result["mcp"] = await mcp_cold(manifest, cwd, n, args.quick, raw)
        print("[bench] through MCP, warm pool", file=sys.stderr)
        result["mcp"].update(await mcp_warm(manifest, cwd, 5 if args.quick else 10, raw))
    r, m = result["raw"], result["mcp"]
    live = m["live_bottles"]
    result["ratios"] = {
        "exec_p50_vs_exec_run": round(m["exec_1_bottle"]["p50_ms"] / m["paired_exec_run"]["p50_ms"], 3),
        "exec_p50_vs_docker_exec_cli": round(m["exec_1_bottle"]["p50_ms"] / r["docker_exec_cli"]["p50_ms"], 3),
        f"exec_p95_{live}_vs_1": round(m[f"exec_{live}_bottles"]["p95_ms"] / m["exec_1_bottle"]["p95_ms"], 3),
        "launch_warm_p50_vs_create_start": round(
            m["launch_warm"]["p50_ms"] / m["paired_create_start_warm"]["p50_ms"], 3
        ),
        "launch_cold_p50_vs_create_start": round(
            m["launch_cold"]["p50_ms"] / m["paired_create_start_cold"]["p50_ms"], 3
        ),
        "cp_in_1MiB_vs_put_archive": round(m["cp_in_1MiB"]["p50_ms"] / r["put_archive_1MiB"]["p50_ms"], 3),
        "cp_in_50MiB_vs_put_archive": round(m["cp_in_50MiB"]["p50_ms"] / r["put_archive_50MiB"]["p50_ms"], 3),
        "parallel_20_vs_raw": round(m["parallel_launch_20_s"] / r["parallel_create_start_20_s"], 3),
    }
    if "parallel_launch_50_s" in m:
        result["ratios"]["parallel_50_vs_raw"] = round(m["parallel_launch_50_s"] / r["parallel_create_start_50_s"], 3)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {json.dumps(result['machine'])}",
        f"runtime: {result['runtime']}",
        f"disk limit and reaper per bottle: {'on' if result['disk_limit_and_reaper'] else 'off'}",
        "",
    ]
    lines.append(f"{'series':<34} {'p50 ms':>10} {'p95 ms':>10}")
    for side in ("raw", "mcp"):
        for k, v in result[side].items():
            if isinstance(v, dict):
                lines.append(f"{side + ' ' + k:<34} {v['p50_ms']:>10.2f} {v['p95_ms']:>10.2f}")
    lines.append("")
    for side in ("raw", "mcp"):
        for k, v in result[side].items():
            if not isinstance(v, dict):
                lines.append(f"{side + ' ' + k:<34} {v:>10}")
    lines.append("")
    for k, v in result["ratios"].items():
        lines.append(f"ratio {k:<40} {v:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer samples, 10 live bottles, no 50-way launch")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--runtime", choices=["auto", "runc", "runsc"], default="auto")
    ap.add_argument(
        "--without-disk-and-reaper",
        action="store_true",
        help="bottles without a disk limit and servers without reapers (--keep-for 0): the launch path as it "
        "was before either existed, to compare like with like",
    )
    args = ap.parse_args(argv)
    result = anyio.run(main_async, args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
