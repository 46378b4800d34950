"""Commits come back as a new host branch only; hostile bundles and names change nothing else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bottle_mcp.gitout import GitError, check_branch, import_bundle
from bottle_mcp.redact import Redactor


def git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@t.invalid", "-c", "init.defaultBranch=main"]
    return subprocess.run(["git", "-C", str(repo), *env_args, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path, str]:
    """A host repository and a clone playing the bottle's copy, both at the start commit."""
    host = tmp_path / "host"
    host.mkdir()
    git(host, "init", "-q")
    (host / "a.txt").write_text("a\n")
    git(host, "add", ".")
    git(host, "commit", "-qm", "start")
    start = git(host, "rev-parse", "HEAD").strip()
    bottle = tmp_path / "bottle"
    subprocess.run(["git", "clone", "-q", str(host), str(bottle)], check=True)
    return host, bottle, start


def _bundle(bottle: Path, *revs: str) -> Path:
    out = bottle.parent / "commits.bundle"
    git(bottle, "bundle", "create", "-q", str(out), *revs)
    return out


def test_the_bottles_commits_become_a_new_branch(repos: tuple[Path, Path, str]) -> None:
    host, bottle, start = repos
    (bottle / "b.txt").write_text("b\n")
    git(bottle, "add", ".")
    git(bottle, "commit", "-qm", "add b\x1b[31m")
    head = git(bottle, "rev-parse", "HEAD").strip()
    imported = import_bundle(host, _bundle(bottle, "HEAD", f"^{start}"), "agent/b", start)
    assert imported.head == head and imported.descends_from_start
    assert [(c.sha, c.subject) for c in imported.commits] == [(head, "add b\\x1b[31m")]
    assert "b.txt" in imported.diffstat
    assert git(host, "rev-parse", "refs/heads/agent/b").strip() == head
    assert git(host, "rev-parse", "HEAD").strip() == start  # the host's checkout did not move


def test_other_refs_in_a_bundle_are_ignored(repos: tuple[Path, Path, str]) -> None:
    host, bottle, start = repos
    (bottle / "c.txt").write_text("c\n")
    git(bottle, "add", ".")
    git(bottle, "commit", "-qm", "c")
    git(bottle, "branch", "main-evil")
    git(bottle, "tag", "v-evil")
    before = git(host, "for-each-ref")
    import_bundle(host, _bundle(bottle, "HEAD", "main-evil", "v-evil", f"^{start}"), "agent/c", start)
    after = git(host, "for-each-ref")
    assert set(after.splitlines()) - set(before.splitlines()) == {
        f"{git(bottle, 'rev-parse', 'HEAD').strip()} commit\trefs/heads/agent/c"
    }


def test_an_existing_branch_is_never_moved(repos: tuple[Path, Path, str]) -> None:
    host, bottle, start = repos
    git(host, "branch", "agent/taken")
    (bottle / "d.txt").write_text("d\n")
    git(bottle, "add", ".")
    git(bottle, "commit", "-qm", "d")
    with pytest.raises(GitError, match="already exists"):
        import_bundle(host, _bundle(bottle, "HEAD", f"^{start}"), "agent/taken", start)
    assert git(host, "rev-parse", "agent/taken").strip() == start


@pytest.mark.parametrize("name", ["-f", "--upload-pack=evil", "a..b", "a b", "x.lock", "a//b", "HEAD@{1}", "é"])
def test_bad_branch_names_are_refused(repos: tuple[Path, Path, str], name: str) -> None:
    with pytest.raises(GitError, match="branch name"):
        check_branch(repos[0], name)


def test_a_corrupt_bundle_is_refused_and_creates_nothing(repos: tuple[Path, Path, str]) -> None:
    host, bottle, start = repos
    bad = bottle.parent / "bad.bundle"
    bad.write_bytes(b"# v2 git bundle\n" + b"0" * 40 + b" HEAD\n\nPACKgarbage")
    with pytest.raises(GitError):
        import_bundle(host, bad, "agent/bad", start)
    probe = subprocess.run(["git", "-C", str(host), "rev-parse", "--verify", "-q", "agent/bad"], check=False)
    assert probe.returncode != 0


def test_a_bundle_with_a_malformed_object_is_refused_before_anything_lands(repos: tuple[Path, Path, str]) -> None:
    host, bottle, start = repos
    tree = git(bottle, "write-tree").strip()
    raw = f"tree {tree}\nparent {start}\nauthor x <no-end 1 +0000\ncommitter c <c@c> 1 +0000\n\nevil\n"
    bad = subprocess.run(
        ["git", "-C", str(bottle), "hash-object", "-t", "commit", "-w", "--literally", "--stdin"],
        input=raw,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    git(bottle, "update-ref", "HEAD", bad)
    with pytest.raises(GitError, match="refuses"):
        import_bundle(host, _bundle(bottle, "HEAD", f"^{start}"), "agent/bad", start)
    probe = subprocess.run(["git", "-C", str(host), "cat-file", "-e", bad], check=False, capture_output=True)
    assert probe.returncode != 0


def test_redactor_replaces_long_values_and_leaves_short_ones() -> None:
    env = {"TOKEN": "abcdef123456", "PIN": "42", "OTHER": "abcdef123456-longer"}
    redactor = Redactor(lambda: ["TOKEN", "PIN", "OTHER", "UNSET"], lambda: env)
    assert redactor.text("t=abcdef123456-longer pin=42 x=abcdef123456") == (
        "t=[redacted OTHER] pin=42 x=[redacted TOKEN]"
    )
    assert redactor.data({"k": ["abcdef123456", 3]}) == {"k": ["[redacted TOKEN]", 3]}
