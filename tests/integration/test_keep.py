"""Kept bottles: a server whose client goes away keeps its bottles and jobs; the next one adopts them.

Real engine, real `bottle-mcp serve` children over stdio, a short grace period. Each test gives its
servers a state folder of their own (XDG_STATE_HOME), so records and leases are the test's alone.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client, StdioServerParameters

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend, Engine
from bottle_mcp.backends.docker.keeper import DockerKeeper, podman_problem
from bottle_mcp.keep import spare_kept
from bottle_mcp.labels import Instance
from bottle_mcp.models import CleanupPlan

from ..conftest import ManifestFactory
from ..reliability.stdio import RawServer

# Long enough for a loaded machine to start the next server in time; tests that wait for the end of
# the grace period pass a short one to the last server with --keep-for.
KEEP_FOR = 60
SHORT = 12


@pytest.fixture(autouse=True)
def engine_can_keep(docker_client: docker.DockerClient) -> None:
    """Keeping needs a reaper that reaches the engine through its Unix socket (keeper.py): say so, not fail."""
    why = DockerKeeper(Engine(), Instance.current()).unavailable() or podman_problem(docker_client)
    if why is not None:
        pytest.skip(why)


@pytest.fixture
def keep_manifest(write_manifest: ManifestFactory, worker_image: str, tmp_path: Path) -> Path:
    return write_manifest(
        f"""
        [host]
        skills_dir = "{tmp_path}"
        keep_for = "{KEEP_FOR}s"
        approve = "never"

        [bottles.offline]
        image = "{worker_image}"

        [bottles.offline.resources]
        memory = "256m"
        pids = 128

        [agents.worker]
        bottle = "offline"
        command = ["true"]
        """
    )


@pytest.fixture
def state_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A state folder of the test's own; whatever it kept is removed at the end, pass or fail."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    yield env
    cli("stop", "--all", env=env)


def objects_of(client: docker.DockerClient, bottle_id: str) -> list[str]:
    flt = {"label": [f"{L.MANAGED}=true", f"{L.BOTTLE}={bottle_id}"]}
    names = [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters=flt)]
    names += [v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or []]
    names += [n["Name"] for n in client.api.networks(filters=flt)]
    return names


def close_client(server: RawServer) -> None:
    """What a host does when its session ends: close the server's stdin, and wait for it to exit."""
    assert server.proc.stdin is not None
    server.proc.stdin.close()
    server.proc.wait(timeout=10)


def wait_until_gone(client: docker.DockerClient, bottle_id: str, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    left = objects_of(client, bottle_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = objects_of(client, bottle_id)
    return left


def test_next_server_adopts_a_kept_bottle_with_its_file_job_output_and_exit_code(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        (bid,) = a.launch(1)
        wrote = a.ok("exec", {"bottle_id": bid, "command": "echo kept-file > /workspace/note.txt"})
        assert wrote["exit_code"] == 0
        # The job outlives the server: it writes most of its output while no server runs.
        started = a.ok(
            "exec",
            {
                "bottle_id": bid,
                "command": "echo first; sleep 3; seq 1 2000; echo to-stderr >&2; exit 7",
                "background": True,
                "timeout_s": 120,
            },
        )
        job_id = started["job"]["job_id"]
    finally:
        close_client(a)
    names = objects_of(docker_client, bid)
    assert any(n.startswith("bottle-mcp-keep-") for n in names), names
    time.sleep(4)  # the job ends while no server runs

    b = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        listed = {x["bottle_id"]: x for x in b.ok("list_active", {})["bottles"]}
        assert listed[bid]["owner"] == "this-server"
        read = b.ok("exec", {"bottle_id": bid, "command": "cat /workspace/note.txt"})
        assert read["stdout"] == "kept-file\n"
        done = b.ok("wait_job", {"job_id": job_id, "timeout_s": 30})
        assert done["done"] and done["job"]["status"] == "exited" and done["job"]["exit_code"] == 7
        expected = "first\n" + "".join(f"{i}\n" for i in range(1, 2001))
        assert done["stdout"]["text"] == expected
        assert done["stderr"]["text"] == "to-stderr\n"
        jobs = b.ok("list_jobs", {"bottle_id": bid})["jobs"]
        assert [j["job_id"] for j in jobs] == [job_id]
        stopped = b.ok("stop_bottle", {"bottle_id": bid})
        assert stopped["removed"]
    finally:
        close_client(b)
    assert wait_until_gone(docker_client, bid, 10) == []


def host_signals(server: RawServer) -> bool:
    """Stop a server the way Claude Code does: SIGINT, SIGTERM 100 ms later, SIGKILL 500 ms after the SIGINT.

    True when the server had exited before the SIGKILL was due.
    """
    server.proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.4)
    exited = server.proc.poll() is not None
    if not exited:
        server.proc.kill()
    server.proc.wait(timeout=10)
    return exited


def cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bottle_mcp", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        input=stdin,
        check=False,
    )


def test_the_hosts_signal_sequence_keeps_the_bottle_the_next_server_adopts_and_nothing_outlives_the_grace(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        (bid,) = a.launch(1)
        job_id = a.ok(
            "exec", {"bottle_id": bid, "command": "sleep 2; echo done-while-away; exit 3", "background": True}
        )["job"]["job_id"]
    finally:
        before_kill = host_signals(a)
    stderr = a.stderr_text()
    assert before_kill, f"the later signals killed the server halfway: {stderr[-2000:]}"
    assert a.proc.returncode == 0, stderr[-2000:]
    assert any(n.startswith("bottle-mcp-keep-") for n in objects_of(docker_client, bid))

    # No server runs: the person sees the kept bottle with its time left, and the job's output.
    listed = cli("ls", env=state_env)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(bid))
    assert " kept " in row and "s left" in row, listed.stdout
    logs = cli("logs", "--follow", job_id, env=state_env)  # follows the job to its end
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "done-while-away\n" and "exited 3" in logs.stderr
    dry = json.loads(cli("cleanup", "--dry-run", "--json", env=state_env).stdout)
    assert bid not in {i["bottle_id"] for i in dry["removed"]}

    b = RawServer(keep_manifest, tmp_path, "--keep-for", f"{SHORT}s", env=state_env)
    try:
        done = b.ok("wait_job", {"job_id": job_id, "timeout_s": 30})
        assert (done["job"]["exit_code"], done["stdout"]["text"]) == (3, "done-while-away\n")
    finally:
        host_signals(b)  # kept again (for SHORT seconds); and this time no server comes back
    left = wait_until_gone(docker_client, bid, SHORT + 15)
    assert left == [], f"still there after the grace period: {left}"


@pytest.fixture
def egress_manifest(write_manifest: ManifestFactory, worker_image: str, tmp_path: Path) -> Path:
    return write_manifest(
        f"""
        [host]
        skills_dir = "{tmp_path}"
        keep_for = "{KEEP_FOR}s"
        approve = "never"

        [bottles.net]
        image = "{worker_image}"
        network = "egress"

        [bottles.net.resources]
        memory = "256m"
        pids = 256

        [bottles.net.egress]
        allow = ["allowed.test"]

        [agents.worker]
        bottle = "net"
        command = ["true"]
        """
    )


def test_a_kept_bottle_with_sidecars_removes_itself_networks_and_volumes_when_no_server_comes(
    egress_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(egress_manifest, tmp_path, "--keep-for", "25s", env=state_env)
    try:
        (bid,) = a.launch(1)
    finally:
        close_client(a)
    flt = {"label": [f"{L.BOTTLE}={bid}"]}
    assert docker_client.api.networks(filters=flt), "an egress bottle has a network of its own"
    assert len(docker_client.api.containers(filters=flt)) >= 4  # bottle, proxy, forwarder, reaper
    # cleanup leaves a kept bottle alone while its time runs (a dry run: the engine is shared).
    report = json.loads(cli("cleanup", "--dry-run", "--json", env=state_env).stdout)
    assert bid not in {i["bottle_id"] for i in report["removed"]}
    assert {i["owner"] for i in report["kept"] if i["bottle_id"] == bid} == {"kept"}
    assert objects_of(docker_client, bid)
    left = wait_until_gone(docker_client, bid, 25 + 15)
    assert left == [], f"still there after the grace period: {left}"


def test_a_changed_manifest_leaves_kept_bottles_alone_and_says_what_differs(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        (bid,) = a.launch(1)
    finally:
        close_client(a)
    keep_manifest.write_text(keep_manifest.read_text() + "\n# edited after the launch\n")
    b = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        row = next(x for x in b.ok("list_active", {})["bottles"] if x["bottle_id"] == bid)
        assert row["owner"] == "kept" and row["kept_until"]
        assert "changed" in row["note"] and str(keep_manifest.resolve()) in row["note"]
        refused = b.call("exec", {"bottle_id": bid, "command": "true"})
        assert refused["isError"] and "changed" in refused["content"][0]["text"]
        preview = b.ok("cleanup", {"dry_run": True})  # a dry run: the engine is shared with others
        assert bid not in {i["bottle_id"] for i in preview["removed"]}
    finally:
        close_client(b)
    # Removed on purpose by the person.
    stopped = cli("stop", bid, env=state_env)
    assert stopped.returncode == 0 and f"removed {bid}" in stopped.stdout, stopped.stderr
    assert wait_until_gone(docker_client, bid, 10) == []


def test_two_servers_never_drive_one_bottle(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    b: RawServer | None = None
    c: RawServer | None = None
    try:
        (bid,) = a.launch(1)
        b = RawServer(keep_manifest, tmp_path, env=state_env)
        assert next(x for x in b.ok("list_active", {})["bottles"] if x["bottle_id"] == bid)["owner"] == "other-server"
        assert b.call("exec", {"bottle_id": bid, "command": "true"})["isError"]
        close_client(b)
        close_client(a)  # kept
        b = RawServer(keep_manifest, tmp_path, env=state_env)  # adopts
        assert b.ok("exec", {"bottle_id": bid, "command": "echo mine"})["stdout"] == "mine\n"
        c = RawServer(keep_manifest, tmp_path, env=state_env)  # finds it leased by b
        row = next(x for x in c.ok("list_active", {})["bottles"] if x["bottle_id"] == bid)
        assert row["owner"] == "other-server" and "adopted by" in row["note"]
        assert c.call("exec", {"bottle_id": bid, "command": "true"})["isError"]
        more = b.launch(1)
    finally:
        for s in (c, b, a):
            if s is not None and s.proc.poll() is None:
                close_client(s)
    # Both kept now; the person removes every bottle kept for them on purpose.
    stopped = cli("stop", "--all", env=state_env)
    assert stopped.returncode == 0, stopped.stderr
    for gone in (bid, *more):
        assert wait_until_gone(docker_client, gone, 10) == []


def test_a_bottle_stopped_or_left_right_after_its_launch_is_removed_or_kept_whole(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """A reaper starts after launch_bottle answers: a stop, or the way out, waits for it rather than race it."""
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        kept, stopped = a.launch(2)
        assert not a.call("stop_bottle", {"bottle_id": stopped}).get("isError")
    finally:
        close_client(a)  # at once: the other reaper may still be starting
    assert wait_until_gone(docker_client, stopped, 10) == []  # its reaper too: not left to wait for nothing
    assert any(n.startswith("bottle-mcp-keep-") for n in objects_of(docker_client, kept))
    stopped_all = cli("stop", "--all", env=state_env)
    assert stopped_all.returncode == 0 and f"removed {kept}" in stopped_all.stdout, stopped_all.stderr
    assert wait_until_gone(docker_client, kept, 10) == []


def test_a_server_that_started_first_adopts_a_bottle_kept_later_on_first_use(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """Two sessions of one manifest: when the one that drove a bottle ends, the other takes it over."""
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    b: RawServer | None = None
    try:
        (bid,) = a.launch(1)
        a.ok("exec", {"bottle_id": bid, "command": "echo from-a > /workspace/a.txt"})
        b = RawServer(keep_manifest, tmp_path, env=state_env)  # a drives it: b leaves it alone at start
        assert b.call("exec", {"bottle_id": bid, "command": "true"})["isError"]
        close_client(a)  # kept now, and b already runs
        row = next(x for x in b.ok("list_active", {})["bottles"] if x["bottle_id"] == bid)
        assert row["owner"] == "kept"
        assert b.ok("exec", {"bottle_id": bid, "command": "cat /workspace/a.txt"})["stdout"] == "from-a\n"
        row = next(x for x in b.ok("list_active", {})["bottles"] if x["bottle_id"] == bid)
        assert row["owner"] == "this-server"
    finally:
        for s in (b, a):
            if s is not None and s.proc.poll() is None:
                close_client(s)
    stopped = cli("stop", "--all", env=state_env)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_until_gone(docker_client, bid, 10) == []


def test_tools_work_on_an_adopted_copy_cwd_bottle_and_a_job_started_before(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "hello.txt").write_text("hello\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    a = RawServer(keep_manifest, repo, env=state_env)
    try:
        plan = a.ok("prepare_bottle", {"agent": "worker", "copy_cwd": True})
        bid = a.ok("launch_bottle", {"plan_id": plan["plan_id"]})["bottle_id"]
        long_job = a.ok("exec", {"bottle_id": bid, "command": "sleep 300", "background": True})["job"]["job_id"]
    finally:
        close_client(a)
    b = RawServer(keep_manifest, repo, env=state_env)
    try:
        (repo / "input.txt").write_text("from the host\n")
        b.ok("cp_in", {"bottle_id": bid, "host_path": str(repo / "input.txt"), "bottle_path": "/workspace/input.txt"})
        commit = (
            "git -c user.name=a -c user.email=a@example.invalid add input.txt && "
            "git -c user.name=a -c user.email=a@example.invalid commit -qm 'add input'"
        )
        assert b.ok("exec", {"bottle_id": bid, "command": commit})["exit_code"] == 0
        diff = b.ok("diff", {"bottle_id": bid})
        assert "input.txt" in diff["stat"]
        b.ok("cp_out", {"bottle_id": bid, "bottle_path": "/workspace/input.txt", "host_path": str(repo / "back.txt")})
        assert (repo / "back.txt").read_text() == "from the host\n"
        branch = b.ok("fetch_branch", {"bottle_id": bid, "branch": "from-kept"})
        assert [c["subject"] for c in branch["commits"]] == ["add input"]
        cancelled = b.ok("cancel_job", {"job_id": long_job})
        assert cancelled["job"]["status"] == "cancelled" and cancelled["processes_left"] == 0
        assert b.ok("stop_bottle", {"bottle_id": bid})["removed"]
    finally:
        close_client(b)
    assert wait_until_gone(docker_client, bid, 10) == []


def _pty_run(argv: list[str], env: dict[str, str], line: bytes, timeout_s: float = 30) -> tuple[str, int]:
    """Run argv on a pseudo-terminal, type `line` once a prompt shows, return what it printed and its status."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes the command
        os.environ.update(env)
        os.execv(argv[0], argv)
    out = b""
    typed = False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        if not typed and b"$ " in out:
            os.write(fd, line)
            typed = True
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_shell_gives_a_terminal_as_the_bottles_user_on_live_and_kept_bottles(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    argv = [sys.executable, "-m", "bottle_mcp", "shell"]
    probe = (
        b"test -t 0 && echo TTY=yes; echo R=$((6*7)) U=$(id -u) "
        b"NET=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); exit 5\r"
    )
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        (bid,) = a.launch(1)
        user = docker_client.api.inspect_container(f"bottle-mcp-worker-{bid}")["Config"]["User"].split(":")[0]
        out, code = _pty_run([*argv, bid], state_env, probe)
        assert code == 5, out
        assert "TTY=yes" in out and "R=42" in out and f"U={user}" in out, out
    finally:
        close_client(a)
    out, code = _pty_run([*argv, bid], state_env, probe)  # kept now
    assert code == 5 and "R=42" in out and f"U={user}" in out, out
    assert "NET=lo,\r" in out, out  # the bottle's own network namespace: loopback only
    assert cli("stop", bid, env=state_env).returncode == 0
    assert wait_until_gone(docker_client, bid, 10) == []


def test_on_exit_remove_under_the_hosts_signals_leaves_nothing_even_when_sigkill_cuts_it_short(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, "--on-exit", "remove", env=state_env)
    try:
        ids = a.launch(4)
    finally:
        host_signals(a)  # four removals rarely fit in 500 ms here: what is cut short, the reapers finish
    for bid in ids:
        left = wait_until_gone(docker_client, bid, 20)
        assert left == [], f"{bid} left behind: {left}"


@pytest.mark.anyio
async def test_cleanup_removes_a_kept_bottle_once_nothing_keeps_it(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    a = RawServer(keep_manifest, tmp_path, env=state_env)
    try:
        (bid,) = a.launch(1)
    finally:
        close_client(a)
    backend = DockerBackend(Instance.current())
    try:
        plan = await spare_kept(backend, await backend.prepare_cleanup())
        assert bid not in {i.bottle_id for i in plan.remove}
        assert {i.owner for i in plan.keep if i.bottle_id == bid} == {"kept"}
        # Its reaper stopped by hand: the bottle is an ordinary orphan now, and cleanup takes it.
        (reaper,) = docker_client.api.containers(filters={"label": [f"{L.ROLE}=reaper", f"{L.BOTTLE}={bid}"]})
        docker_client.api.stop(reaper["Id"], timeout=0)
        plan = await spare_kept(backend, await backend.prepare_cleanup())
        mine = CleanupPlan(remove=[i for i in plan.remove if i.bottle_id == bid], keep=[])
        assert {i.kind for i in mine.remove} == {"container", "volume"}
        report = await backend.cleanup(mine)  # only this test's objects: the engine is shared
        assert report.failed == []
    finally:
        await backend.aclose()
    assert objects_of(docker_client, bid) == []


@pytest.mark.anyio
async def test_the_sdk_clients_goodbye_keeps_and_the_next_sdk_session_adopts(
    keep_manifest: Path, tmp_path: Path, state_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """The same story through the SDK's own stdio client, whose goodbye is: close stdin, then signals."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bottle_mcp", "serve", "--manifest", str(keep_manifest)],
        env={**state_env, **{k: os.environ[k] for k in ("DOCKER_HOST",) if k in os.environ}},
        cwd=str(tmp_path),
    )

    async def ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await client.call_tool(tool, args)
        assert not result.is_error, result.content
        assert isinstance(result.structured_content, dict)
        return result.structured_content

    with anyio.fail_after(120):
        async with Client(params, mode="legacy") as client:
            plan = await ok(client, "prepare_bottle", {"agent": "worker"})
            bid = (await ok(client, "launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"]
            await ok(client, "exec", {"bottle_id": bid, "command": "echo sdk > /workspace/sdk.txt"})
            job = await ok(client, "exec", {"bottle_id": bid, "command": "sleep 2; echo later", "background": True})
        async with Client(params, mode="auto") as client:
            listed = await ok(client, "list_active", {})
            assert {b["bottle_id"]: b["owner"] for b in listed["bottles"]}[bid] == "this-server"
            done = await ok(client, "wait_job", {"job_id": job["job"]["job_id"], "timeout_s": 30})
            assert (done["job"]["exit_code"], done["stdout"]["text"]) == (0, "later\n")
            read = await ok(client, "exec", {"bottle_id": bid, "command": "cat /workspace/sdk.txt"})
            assert read["stdout"] == "sdk\n"
            await ok(client, "stop_bottle", {"bottle_id": bid})
    assert wait_until_gone(docker_client, bid, 10) == []
