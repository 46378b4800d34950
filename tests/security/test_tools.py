"""The server's tools under attack: copy-in escapes and races, engine options, hostile output, cancelled exec."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.errors import BottleNotFoundError, PathError
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
    "host_path",
    "bottle_path",
    "dry_run",
    "limit",
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
    assert any("cut at" in n for n in res.notes)
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
