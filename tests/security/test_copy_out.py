"""cp_out against a stalling or hostile bottle: it removes nothing it did not create, plants nothing git
runs, and never hands the host an executable or set-id file unasked."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import anyio
import pytest

from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.errors import PathError
from bottle_mcp.service import BottleService

pytestmark = pytest.mark.anyio

# Watches the bottle's processes and stops the server's packing command (it names itself "bottle-get")
# the moment it appears, then says which pid it stopped.
STOPPER = """
import os, signal, time
end = time.time() + 60
while time.time() < end:
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"bottle-get" in f.read():
                    os.kill(int(pid), signal.SIGSTOP)
                    with open("/tmp/stopped", "w") as out:
                        out.write(pid)
                    raise SystemExit
        except (OSError, ValueError):
            pass
"""


async def _sh(service: BottleService, bottle: DockerBottle, command: str) -> str:
    res = await service.exec(bottle.id, command, timeout_s=60)
    assert res.exit_code == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("kind", ["file", "folder"])
async def test_a_folder_that_appears_while_the_bottle_stalls_its_tar_is_left_alone(
    sec_service: BottleService, plain_bottle: DockerBottle, security_manifest: Path, kind: str
) -> None:
    root = security_manifest.parent / "root"
    src = f"/workspace/stall-{kind}"
    make = f"echo report > {src}" if kind == "file" else f"mkdir -p {src} && echo report > {src}/r.txt"
    await _sh(sec_service, plain_bottle, f"rm -rf {src}; {make}")
    # The bottle stops its own packing command (SIGSTOP) as soon as it starts, before it sends a byte.
    await _sh(sec_service, plain_bottle, f"cat > /tmp/stopper.py <<'EOF'\n{STOPPER}EOF\n")
    await _sh(sec_service, plain_bottle, "python3 /tmp/stopper.py >/dev/null 2>&1 &")
    dest = root / f"notes-{kind}"
    outcome: list[BaseException | object] = []

    async def copy() -> None:
        try:
            outcome.append(await sec_service.delegate.cp_out(plain_bottle.id, src, str(dest)))
        except PathError as e:
            outcome.append(e)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(copy)
            # The stopper ends as soon as it stopped the command: wait for it (it writes /tmp/stopped first).
            await _sh(sec_service, plain_bottle, "while [ ! -s /tmp/stopped ]; do sleep 0.05; done")
            # Meanwhile a person makes a folder with notes at the destination.
            dest.mkdir()
            (dest / "notes.txt").write_text("my notes\n")
            await _sh(sec_service, plain_bottle, "kill -CONT $(cat /tmp/stopped); rm /tmp/stopped")
    assert isinstance(outcome[0], PathError), outcome
    assert "appeared" in str(outcome[0])
    assert (dest / "notes.txt").read_text() == "my notes\n"
    assert sorted(os.listdir(dest)) == ["notes.txt"]


@pytest.fixture(scope="module")
def repo(security_manifest: Path) -> Path:
    """A git work tree under the root (the default root is the server's start folder, usually one)."""
    path = security_manifest.parent / "root" / "repo"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "README").write_text("hi\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    return path


@pytest.mark.parametrize(
    "dest", ["repo/.git/hooks/post-commit", "repo/.git/config", "repo/.git", "repo/.GIT", "repo/.git/hooks"]
)
async def test_copy_out_never_writes_in_a_git_folder(
    sec_service: BottleService, plain_bottle: DockerBottle, repo: Path, dest: str
) -> None:
    marker = repo.parent / "hook-ran"
    await _sh(
        sec_service,
        plain_bottle,
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > /workspace/post-commit && chmod 4755 /workspace/post-commit",
    )
    with pytest.raises(PathError, match="git"):
        await sec_service.delegate.cp_out(plain_bottle.id, "/workspace/post-commit", dest)
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    await anyio.run_process([*git, "commit", "-q", "--allow-empty", "-m", "later"])
    assert not marker.exists()


async def test_a_copied_tree_brings_no_git_folder_no_exec_and_no_set_id_bits(
    sec_service: BottleService, plain_bottle: DockerBottle, repo: Path
) -> None:
    await _sh(
        sec_service,
        plain_bottle,
        "set -e; d=/workspace/tree; rm -rf $d; mkdir -p $d/.git/hooks $d/sub/.Git; "
        "printf '#!/bin/sh\\necho pwned\\n' > $d/.git/hooks/post-commit; echo x > $d/sub/.Git/config; "
        "printf '#!/bin/sh\\n' > $d/tool; chmod 6755 $d/tool $d/.git/hooks/post-commit; echo '[core]' > $d/.gitconfig",
    )
    res = await sec_service.delegate.cp_out(plain_bottle.id, "/workspace/tree", "repo/tree")
    out = repo / "tree"
    assert sorted(os.listdir(out)) == [".gitconfig", "sub", "tool"]
    assert os.listdir(out / "sub") == []
    assert sum(".git" in s.casefold() for s in res.skipped) == 2, res.skipped
    mode = stat.S_IMODE(os.stat(out / "tool").st_mode)
    assert mode & 0o7111 == 0, oct(mode)
