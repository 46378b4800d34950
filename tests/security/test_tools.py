"""The server's tools under attack: copy-in escapes and races, engine options, hostile output, cancelled exec."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import anyio
import pytest

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.errors import BottleError, BottleNotFoundError, PathError
from bottle_mcp.labels import Instance
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig

from .conftest import launch

pytestmark = pytest.mark.anyio

SECRET = "host-secret-4f1c9a"


@pytest.fixture(scope="module")
def host_tree(security_manifest: Path) -> tuple[Path, Path]:
    """(root the server may read, a sibling folder holding a secret it may not)."""
    root = security_manifest.parent / "root"
    outside = security_manifest.parent / "root-evil"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text(SECRET)
    (root / "ok.txt").write_text("fine\n")
    (root / "link-out").symlink_to(outside / "secret.txt")
    (root / "dir-with-link").mkdir()
    (root / "dir-with-link" / "a.txt").write_text("a\n")
    (root / "dir-with-link" / "escape").symlink_to("../../root-evil")
    return root, outside


@pytest.mark.parametrize(
    "host_path",
    ["../root-evil/secret.txt", "{outside}/secret.txt", "/etc/passwd", "link-out", "dir-with-link", "{root}-evil"],
)
async def test_copy_in_refuses_paths_and_links_that_leave_the_root(
    sec_service: BottleService, plain_bottle: DockerBottle, host_tree: tuple[Path, Path], host_path: str
) -> None:
    root, outside = host_tree
    with pytest.raises(PathError):
        await sec_service.cp_in(plain_bottle.id, host_path.format(root=root, outside=outside), "/workspace/in")
    res = await sec_service.exec(plain_bottle.id, f"grep -rl {SECRET} /workspace /tmp $HOME 2>/dev/null; true")
    assert SECRET not in res.stdout


@pytest.mark.parametrize("bottle_path", ["workspace/x", "/workspace/../etc/x", "/", "/workspace/a\nb"])
async def test_copy_in_refuses_bad_destinations(
    sec_service: BottleService, plain_bottle: DockerBottle, host_tree: tuple[Path, Path], bottle_path: str
) -> None:
    with pytest.raises(PathError):
        await sec_service.cp_in(plain_bottle.id, "ok.txt", bottle_path)


async def test_symlink_flipped_during_copies_never_brings_the_secret_in(
    sec_service: BottleService, plain_bottle: DockerBottle, host_tree: tuple[Path, Path]
) -> None:
    root, outside = host_tree
    race = root / "race"
    race.mkdir()
    stop = threading.Event()

    def flip() -> None:
        target = race / "f"
        tmp_file, tmp_link = race / ".f-file", race / ".f-link"
        while not stop.is_set():
            tmp_file.write_text("benign\n")
            os.replace(tmp_file, target)
            if not tmp_link.is_symlink():
                tmp_link.symlink_to(outside / "secret.txt")
            os.replace(tmp_link, target)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    outcomes = {"copied": 0, "refused": 0}
    try:
        with anyio.fail_after(120):
            for i in range(30):
                try:
                    await sec_service.cp_in(plain_bottle.id, "race", f"/workspace/race{i}")
                    outcomes["copied"] += 1
                except PathError:
                    outcomes["refused"] += 1
    finally:
        stop.set()
        flipper.join()
    res = await sec_service.exec(plain_bottle.id, f"grep -rl {SECRET} /workspace 2>/dev/null; cat /workspace/race*/f")
    assert SECRET not in res.stdout, outcomes
    assert sum(outcomes.values()) == 30


async def test_exec_cannot_target_another_servers_bottle(sec_service: BottleService, security_manifest: Path) -> None:
    other = BottleService(
        ServiceConfig(manifest_path=security_manifest, cwd=security_manifest.parent),
        DockerBackend(Instance.current()),
    )
    try:
        theirs = await launch(other, "plain")
        with pytest.raises(BottleNotFoundError, match="another server"):
            await sec_service.exec(theirs.id, "id")
        for name in (theirs.container_id, theirs.container_id[:12]):
            with pytest.raises(BottleNotFoundError):
                await sec_service.exec(name, "id")
        with pytest.raises(BottleNotFoundError):
            await sec_service.stop(theirs.id)
        assert (await theirs.exec("echo still-mine", timeout_s=30, workdir=None, output_cap=100)).exit_code == 0
    finally:
        await other.aclose()


ALLOWED_PARAMETERS = {
    "agent",
    "copy_cwd",
    "plan_id",
    "bottle_id",
    "command",
    "timeout_s",
    "workdir",
    # a per-call output cap, held under the manifest's ceiling (output_cap_max)
    "output_cap",
    "host_path",
    "bottle_path",
    "dry_run",
    "limit",
    # delegation: the task prompt, jobs and their paging, the host branch that receives commits
    "prompt",
    "background",
    "job_id",
    "cursor",
    "branch",
}


async def test_no_tool_takes_engine_options_and_extra_arguments_change_nothing(
    sec_service: BottleService, plain_bottle: DockerBottle
) -> None:
    mcp = build_server(sec_service)
    tools = await mcp.list_tools()
    params = {name for t in tools for name in (t.input_schema.get("properties") or {})}
    assert params <= ALLOWED_PARAMETERS, params - ALLOWED_PARAMETERS
    result = await mcp.call_tool(
        "exec",
        {
            "bottle_id": plain_bottle.id,
            "command": "id -u; cat /proc/self/status | grep CapEff",
            "user": "0",
            "privileged": True,
            "cap_add": ["SYS_ADMIN"],
            "container": "bottle-mcp-egress-proxy",
        },
    )
    text = str(result)
    assert "1000" in text and "0000000000000000" in text and "uid=0" not in text


async def test_hostile_output_is_bounded_and_escaped(sec_service: BottleService, plain_bottle: DockerBottle) -> None:
    res = await sec_service.exec(
        plain_bottle.id, "head -c 100000000 /dev/zero | tr '\\0' A; head -c 3000000 /dev/zero >&2", timeout_s=120
    )
    cap = sec_service.output_cap
    assert res.truncated and res.exit_code == 0
    assert res.stdout_bytes == 100_000_000 and res.stderr_bytes == 3_000_000
    assert len(res.stdout) <= cap and len(res.stderr) <= 4 * cap + 64
    assert any("cut in the middle" in n for n in res.notes)
    res = await sec_service.exec(plain_bottle.id, "printf 'a\\0b\\033[2J\\033]0;pwned\\007\\233c\\r\\n'")
    assert "\x00" not in res.stdout and "\x1b" not in res.stdout and "\x07" not in res.stdout
    assert "\\x00" in res.stdout and "\\x1b[2J" in res.stdout and "\\x07" in res.stdout
    assert any("control characters" in n for n in res.notes)


async def _sleepers(service: BottleService, bottle: DockerBottle, marker: str) -> list[str]:
    res = await service.exec(bottle.id, f"pgrep -f 'sleep {marker}' || true")
    return res.stdout.split()


async def _wait_for(service: BottleService, bottle: DockerBottle, marker: str, *, present: bool) -> None:
    with anyio.fail_after(30):
        while bool(await _sleepers(service, bottle, marker)) != present:  # noqa: ASYNC110 - no event to await
            await anyio.sleep(0.1)


async def test_cancelled_exec_leaves_no_process_behind(sec_service: BottleService, plain_bottle: DockerBottle) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(sec_service.exec, plain_bottle.id, "sleep 1001 & sleep 1002 & (sleep 1003; true); wait")
        await _wait_for(sec_service, plain_bottle, "100[123]", present=True)
        tg.cancel_scope.cancel()
    await _wait_for(sec_service, plain_bottle, "100[123]", present=False)


async def test_timed_out_exec_leaves_no_process_behind(sec_service: BottleService, plain_bottle: DockerBottle) -> None:
    res = await sec_service.exec(plain_bottle.id, "sleep 2001 & setsid sleep 2002 & sleep 2003; wait", timeout_s=1)
    assert res.timed_out and res.exit_code is None
    await _wait_for(sec_service, plain_bottle, "200[13]", present=False)


def _host_tree_state(top: Path) -> dict[str, str]:
    """Every path under top (links not followed): 'link -> target' for symlinks, 'file'/'dir' otherwise."""
    state = {}
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(dirpath) / name
            state[str(p.relative_to(top))] = (
                f"link -> {os.readlink(p)}" if p.is_symlink() else ("dir" if p.is_dir() else "file")
            )
    return state


@pytest.mark.parametrize("host_path", ["../root-evil/got", "{outside}/got", "/tmp/got-{pid}", "{root}-evil/got"])
async def test_copy_out_refuses_host_destinations_outside_the_root(
    sec_service: BottleService, plain_bottle: DockerBottle, host_tree: tuple[Path, Path], host_path: str
) -> None:
    root, outside = host_tree
    await sec_service.exec(plain_bottle.id, "echo payload > /workspace/payload.txt")
    dest = host_path.format(root=root, outside=outside, pid=os.getpid())
    with pytest.raises(PathError):
        await sec_service.delegate.cp_out(plain_bottle.id, "/workspace/payload.txt", dest)
    assert not (outside / "got").exists() and not Path(f"/tmp/got-{os.getpid()}").exists()


async def test_copy_out_of_a_hostile_tree_writes_only_plain_files_under_the_destination(
    sec_service: BottleService, plain_bottle: DockerBottle, host_tree: tuple[Path, Path]
) -> None:
    root, outside = host_tree
    before_outside = _host_tree_state(outside.parent)
    await sec_service.exec(
        plain_bottle.id,
        "set -e; d=/workspace/hostile; rm -rf $d; mkdir -p $d/sub; echo ok > $d/sub/a.txt; "
        "ln -s ../../../../root-evil/secret.txt $d/up; ln -s /etc/passwd $d/abs; ln $d/sub/a.txt $d/hard; "
        'mkfifo $d/fifo; echo x > "$d/new\nline"; echo y > $d/...; ln -s . $d/loop',
    )
    static = await sec_service.delegate.cp_out(plain_bottle.id, "/workspace/hostile", "static")
    assert (root / "static" / "sub" / "a.txt").read_text() == "ok\n"
    assert len(static.skipped) >= 3, static.skipped  # the links and the fifo
    assert not any(v.startswith("link") for v in _host_tree_state(root / "static").values())
    # Now the agent keeps swapping a folder for a link that points up and out while copies run.
    await sec_service.exec(
        plain_bottle.id,
        "(while :; do mkdir -p /workspace/hostile/flip && rm -rf /workspace/hostile/flip && "
        "ln -sfn ../../.. /workspace/hostile/flip && rm -f /workspace/hostile/flip; done) "
        ">/dev/null 2>&1 & echo $! > /tmp/flipper",
    )
    try:
        for i in range(10):
            with contextlib.suppress(BottleError):  # refusing is fine; writing outside is not
                await sec_service.delegate.cp_out(plain_bottle.id, "/workspace/hostile", f"out{i}")
    finally:
        await sec_service.exec(plain_bottle.id, "kill $(cat /tmp/flipper)")
    for i in range(10):
        for rel, kind in _host_tree_state(root / f"out{i}").items() if (root / f"out{i}").exists() else []:
            assert not kind.startswith("link"), (i, rel, kind)
    after = _host_tree_state(outside.parent)
    new = {k: v for k, v in after.items() if k not in before_outside}
    assert all(k.split("/", 1)[0] == "root" for k in new), new  # nothing appeared beside the root
    assert (outside / "secret.txt").read_text() == SECRET
