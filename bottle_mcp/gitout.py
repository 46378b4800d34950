"""Bringing an agent's commits back into the host repository as a new branch.

The bottle makes a git bundle (its commits since the start); the bundle is copied out like any
file (see copyout.py) and the host's own git verifies it and takes its objects in. Nothing from
the bottle runs on the host: a bundle is data (a header naming refs, and a pack). The pack goes
through `git index-pack --strict`, which checks every object and that everything it references
exists, before any of it lands (a plain `git fetch` from a bundle does not check objects on the
git versions Debian ships). Only the bundle's HEAD is taken (its other refs are ignored), and the
branch is created atomically only if it does not exist yet, so no existing ref can be overwritten.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BottleError
from .output import safe_text
from .results import CommitInfo

BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
OID_RE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
MAX_COMMITS = 200
DIFFSTAT_CAP = 64 * 1024
GIT_TIMEOUT_S = 300


class GitError(BottleError):
    """A git operation on the host failed."""


def _env() -> dict[str, str]:
    """The server's environment without GIT_* variables that could point git elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def host_git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the host's git in `repo` (blocking: call from a worker thread)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), "-c", "transfer.fsckObjects=true", "-c", "fetch.fsckObjects=true", *args],
            capture_output=True,
            text=True,
            errors="replace",
            env=_env(),
            timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed on the host; install it to bring commits back") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} in {str(repo)!r} took longer than {GIT_TIMEOUT_S} s") from None
    if check and proc.returncode != 0:
        detail, _ = safe_text(proc.stderr.strip().encode()[:500])
        raise GitError(f"git {args[0]} failed in {str(repo)!r}: {detail}")
    return proc


def _index_pack(repo: Path, pack: bytes) -> None:
    """Store a (thin) pack's objects in `repo` after checking each of them and their links (blocking)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), "index-pack", "--stdin", "--fix-thin", "--strict"],
            input=pack,
            capture_output=True,
            env=_env(),
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"checking the bottle's commits took longer than {GIT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        detail, _ = safe_text(proc.stderr.strip()[:500])
        raise GitError(f"the bottle's bundle holds objects git refuses ({detail}); nothing was imported")


def bundle_pack(data: bytes) -> bytes:
    """The pack of a v2/v3 bundle (what follows its header's blank line)."""
    if not data.startswith((b"# v2 git bundle\n", b"# v3 git bundle\n")):
        raise GitError("the bottle sent something that is not a git bundle; nothing was imported")
    end = data.find(b"\n\n")
    if end < 0 or not data[end + 2 :].startswith(b"PACK"):
        raise GitError("the bottle's bundle has no pack after its header; nothing was imported")
    return data[end + 2 :]


def check_branch(repo: Path, branch: str) -> str:
    """A new, well-formed branch name for the host repository."""
    if not BRANCH_RE.match(branch) or ".." in branch or branch.endswith((".lock", "/", ".")) or "//" in branch:
        raise GitError(
            f"{branch[:120]!r} is not an acceptable branch name; use letters, digits, '.', '_', '-' and '/', "
            "starting with a letter or digit, e.g. 'agent/fix-tests'"
        )
    if host_git(repo, "check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise GitError(f"{branch!r} is not a valid git branch name; pick another, e.g. 'agent/fix-tests'")
    if host_git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False).returncode == 0:
        raise GitError(
            f"branch {branch!r} already exists in {str(repo)!r}; bringing commits back never moves an existing "
            "branch: name a new one"
        )
    return branch


@dataclass(frozen=True)
class Imported:
    head: str
    commits: list[CommitInfo]
    diffstat: str
    descends_from_start: bool


def import_bundle(repo: Path, bundle: Path, branch: str, start: str | None) -> Imported:
    """Verify `bundle`, fetch its HEAD and create `branch` at it (blocking)."""
    check_branch(repo, branch)
    host_git(repo, "bundle", "verify", "--quiet", str(bundle))
    heads = host_git(repo, "bundle", "list-heads", str(bundle)).stdout.splitlines()
    head = next((line.split(" ", 1)[0] for line in heads if line.endswith(" HEAD")), None)
    if head is None or not OID_RE.match(head):
        raise GitError("the bottle's bundle has no usable HEAD; nothing was imported")
    _index_pack(repo, bundle_pack(bundle.read_bytes()))
    host_git(repo, "cat-file", "-e", f"{head}^{{commit}}")
    zero = "0" * len(head)
    host_git(repo, "update-ref", "-m", "bottle-mcp: commits from a bottle", f"refs/heads/{branch}", head, zero)
    descends = start is None or (
        host_git(repo, "merge-base", "--is-ancestor", start, head, check=False).returncode == 0
    )
    span = [f"{start}..{head}"] if start and descends else [head]
    log = host_git(repo, "log", f"--max-count={MAX_COMMITS}", "--format=%H%x1f%s", *span, "--").stdout
    commits = []
    for line in log.splitlines():
        sha, _, subject = line.partition("\x1f")
        text, _ = safe_text(subject.encode()[:300])
        commits.append(CommitInfo(sha=sha, subject=text))
    stat = host_git(repo, "diff", "--stat", start or EMPTY_TREE, head, "--").stdout
    stat_text, _ = safe_text(stat.encode()[:DIFFSTAT_CAP])
    return Imported(head=head, commits=commits, diffstat=stat_text, descends_from_start=descends)
