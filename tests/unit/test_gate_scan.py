"""The gate's scan of what a push carries, run by real git (receive-pack and its quarantine) on this machine.

The gate's pre-receive hook runs here as a local hook on a bare repository; the
scanner is the gate's own rules without detect-secrets (which lives only in the
gate's image; the security suite runs the whole thing there).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .test_gates import GATE_IMAGE_DIR, scan

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
KEY = "ghp_" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz1bCd4fGh7j"

HOOK = """\
import json, os, sys
from pathlib import Path
sys.path.insert(0, {gate!r})
import scan


class Rules(scan.Scanner):
    def __init__(self):
        self.plugins = []
        self.credentials = []


updates = [tuple(line.split(" ", 2)) for line in sys.stdin.read().splitlines()]
result = scan.scan_refs(updates, Rules())
try:
    scan.scan_push(Path(os.environ.get("GIT_DIR", ".")).resolve(), result, Rules())
    error = None
except scan.ScanError as e:
    error = str(e)
Path({out!r}).write_text(json.dumps({{
    "error": error,
    "findings": [f.describe() for f in result.findings],
    "counts": result.counts,
    "refs": result.refs,
}}))
sys.exit(1 if error or result.findings else 0)
"""


def git(cwd: Path, *args: str, data: bytes | None = None) -> str:
    proc = subprocess.run([*GIT, *args], cwd=cwd, input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A bare 'gate' repository with the scan as its pre-receive hook, and a work tree pushing to it."""
    bare, work, out = tmp_path / "gate.git", tmp_path / "work", tmp_path / "result.json"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    # Keep every pack as sent (no unpacking into loose objects): thin packs, deltas and all.
    git(bare, "config", "receive.unpackLimit", "1")
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nexec {sys.executable} {bare / 'hooks' / 'scan_hook.py'}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
    (bare / "hooks" / "scan_hook.py").write_text(HOOK.format(gate=str(GATE_IMAGE_DIR), out=str(out)))
    git(tmp_path, "init", "-q", str(work))
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i * 7919}" for i in range(3000)]
    (work / "big.txt").write_text("\n".join(lines) + "\n")
    (work / "fixture.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIB (a test fixture)\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "base")
    git(work, "remote", "add", "gate", str(bare))
    # The base is accepted without the hook, as the gate's mirror of the upstream would hold it.
    os.rename(hook, hook.with_suffix(".off"))
    git(work, "push", "-q", "gate", "main")
    os.rename(hook.with_suffix(".off"), hook)
    return bare, work, out


def push(work: Path, out: Path, spec: str) -> tuple[bool, dict[str, object]]:
    proc = subprocess.run(["git", "push", "gate", spec], cwd=work, capture_output=True, check=False)
    return proc.returncode == 0, json.loads(out.read_text())


def test_a_changed_line_in_a_big_file_arrives_as_a_delta_and_is_scanned(repos: tuple[Path, Path, Path]) -> None:
    _bare, work, out = repos
    text = (work / "big.txt").read_text().replace("line 1500:", f"line 1500: token {KEY}")
    (work / "big.txt").write_text(text)
    git(work, "commit", "-qam", "change one line")
    ok, result = push(work, out, "main")
    assert not ok
    assert result["counts"] == {"commit": 1, "tree": 1, "blob": 1}  # the thin pack's base is not counted
    findings = result["findings"]
    assert isinstance(findings, list) and len(findings) == 1
    finding = str(findings[0])
    assert finding.startswith("blob ") and "(path big.txt) line 1501: GitHub token: ghp_... (40" in finding
    assert KEY[8:] not in json.dumps(result)


def test_lines_a_file_already_held_upstream_are_not_held_against_a_push(repos: tuple[Path, Path, Path]) -> None:
    _bare, work, out = repos
    with (work / "fixture.pem").open("a") as f:
        f.write("an innocent line added below the fixture\n")
    git(work, "commit", "-qam", "edit the fixture's file")
    ok, result = push(work, out, "main")
    assert ok, result
    # A file with the same fixture at a new path is new content there: scanned whole.
    git(work, "mv", "fixture.pem", "moved.pem")
    (work / "moved.pem").write_text((work / "moved.pem").read_text() + "another line\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "move it")
    ok, result = push(work, out, "main")
    assert not ok and "(path moved.pem) line 1: private key" in str(result["findings"])


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        ("blob", "blob {oid} (not in a pushed tree) line 1: GitHub token"),
        ("tree", "tree {oid} entry 1 name (withheld): GitHub token"),
        ("commit", "commit {oid} x-token header: GitHub token"),
        ("tag", "tag {oid} tagger header: GitHub token"),
    ],
)
def test_an_object_pushed_to_a_tag_alone_is_scanned(repos: tuple[Path, Path, Path], build: str, expected: str) -> None:
    _bare, work, out = repos
    blob = git(work, "hash-object", "-w", "--stdin", data=f"{KEY}\n".encode())
    if build == "blob":
        oid = blob
    elif build == "tree":
        clean = git(work, "hash-object", "-w", "--stdin", data=b"clean\n")
        oid = git(work, "mktree", data=f"100644 blob {clean}\t{KEY}\n".encode())
    elif build == "commit":
        tree, parent = git(work, "rev-parse", "HEAD^{tree}"), git(work, "rev-parse", "HEAD")
        raw = (
            f"tree {tree}\nparent {parent}\nauthor a <a@example.invalid> 1700000000 +0000\n"
            f"committer a <a@example.invalid> 1700000000 +0000\nx-token {KEY}\n\nmessage\n"
        )
        oid = git(work, "hash-object", "-t", "commit", "-w", "--stdin", data=raw.encode())
    else:
        head = git(work, "rev-parse", "HEAD")
        raw = f"object {head}\ntype commit\ntag v9\ntagger {KEY} <a@example.invalid> 1700000000 +0000\n\nv9\n"
        oid = git(work, "hash-object", "-t", "tag", "-w", "--stdin", data=raw.encode())
    ok, result = push(work, out, f"{oid}:refs/tags/t-{build}")
    assert not ok
    assert any(f.startswith(expected.format(oid=oid[:12])) for f in result["findings"]), result  # type: ignore[attr-defined]


def test_a_ref_name_is_scanned_even_when_the_push_carries_no_object(repos: tuple[Path, Path, Path]) -> None:
    _bare, work, out = repos
    ok, result = push(work, out, f"HEAD:refs/heads/{KEY}")
    assert not ok
    assert result["counts"] == {}
    assert result["refs"] == ["(a ref name holding a possible secret, withheld)"]
    assert KEY[8:] not in json.dumps(result)


def test_a_clean_push_passes_and_counts_what_it_scanned(repos: tuple[Path, Path, Path]) -> None:
    _bare, work, out = repos
    (work / "notes.txt").write_text("nothing to see\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "notes")
    git(work, "tag", "-a", "-m", "release", "v1")
    ok, result = push(work, out, "main")
    assert ok, result
    assert result["counts"] == {"commit": 1, "tree": 1, "blob": 1}
    ok, result = push(work, out, "refs/tags/v1")
    assert ok and result["counts"] == {"tag": 1}, result


def test_tree_entries_and_headers_are_parsed_from_raw_objects(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "r")
    repo = tmp_path / "r"
    blob = git(repo, "hash-object", "-w", "--stdin", data=b"x\n")
    tree = git(repo, "mktree", "-z", data=f"100644 blob {blob}\tline\nbreak\x00100755 blob {blob}\tsp ace\x00".encode())
    raw = subprocess.run(["git", "cat-file", "tree", tree], cwd=repo, capture_output=True, check=True).stdout
    assert list(scan.tree_entries(raw)) == [("100644", "line\nbreak", blob), ("100755", "sp ace", blob)]
    headers, message = scan.headers_and_message(b"tree t\nauthor a\ngpgsig one\n two\nx-a b\n\nsubject\n\nbody\n")
    assert headers == [("tree", "t"), ("author", "a"), ("gpgsig", "one\ntwo"), ("x-a", "b")]
    assert message == "subject\n\nbody\n"
    assert scan.printable("a\nb" + "c" * 100, 10) == "a\\nbcccccc... (103 characters)"
