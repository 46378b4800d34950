"""Copies out of a bottle: the host destination is confined and every tar member is distrusted."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

import pytest

from bottle_mcp.copyout import confine_host_dest, extract_stream, extract_tar
from bottle_mcp.errors import PathError


def _tar(*members: tuple[str, bytes | None, bytes, str]) -> bytes:
    """Members as (name, data or None, type, linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o4755
            info.size = len(data or b"")
            tf.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[str, bytes | None, bytes, str]:
    return (name, data, tarfile.REGTYPE, "")


def _dir(name: str) -> tuple[str, bytes | None, bytes, str]:
    return (name, None, tarfile.DIRTYPE, "")


def test_a_folder_is_written_with_files_and_subfolders(tmp_path: Path) -> None:
    data = _tar(_dir("out"), _dir("out/sub"), _file("out/sub/a.txt", b"hello"), _file("out/b.txt"))
    stats = extract_tar(data, "out", tmp_path / "copy")
    assert (tmp_path / "copy" / "sub" / "a.txt").read_bytes() == b"hello"
    assert (stats.files, stats.directories, stats.bytes) == (2, 2, 6)
    assert str(tmp_path / "copy" / "sub" / "a.txt") in stats.written


def test_set_id_bits_from_the_bottle_are_dropped(tmp_path: Path) -> None:
    extract_tar(_tar(_file("tool")), "tool", tmp_path / "tool", keep_exec=True)
    mode = stat.S_IMODE(os.stat(tmp_path / "tool").st_mode)
    assert mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX) == 0
    assert mode & 0o100


def test_links_and_special_files_inside_a_folder_are_skipped_and_reported(tmp_path: Path) -> None:
    data = _tar(
        _dir("out"),
        ("out/passwd", None, tarfile.SYMTYPE, "/etc/passwd"),
        ("out/hard", None, tarfile.LNKTYPE, "out/x"),
        ("out/fifo", None, tarfile.FIFOTYPE, ""),
        _file("out/ok.txt"),
    )
    stats = extract_tar(data, "out", tmp_path / "copy")
    assert sorted(os.listdir(tmp_path / "copy")) == ["ok.txt"]
    assert len(stats.skipped) == 3
    assert any("passwd (symlink -> /etc/passwd" in s for s in stats.skipped)


@pytest.mark.parametrize(
    "members",
    [
        [_dir("out"), _file("/etc/evil")],
        [_dir("out"), _file("out/../../evil")],
        [_dir("out"), _file("other/evil")],
        [_dir("out"), _file("out/a"), _file("out/a")],
        [_dir("out"), _file("out/a"), _file("out/a/b")],
        [("out", None, tarfile.SYMTYPE, "/etc")],
        [_file("out"), _file("out2")],
        [],
    ],
)
def test_hostile_archives_are_refused_and_leave_nothing_behind(
    tmp_path: Path, members: list[tuple[str, bytes | None, bytes, str]]
) -> None:
    dest = tmp_path / "copy"
    with pytest.raises(PathError):
        extract_tar(_tar(*members), "out", dest)
    assert not os.path.lexists(dest)
    assert sorted(os.listdir(tmp_path)) == []
    assert not Path("/etc/evil").exists()


def test_a_sparse_file_cannot_blow_up_into_more_than_was_sent(tmp_path: Path) -> None:
    src = tmp_path / "src" / "out"
    src.mkdir(parents=True)
    with open(src / "huge", "wb") as f:
        f.truncate(1024**4)  # 1 TiB of holes, a few KiB in a sparse tar
    (src / "ok.txt").write_text("ok\n")
    tar = subprocess.run(
        ["tar", "-c", "-S", "--format=gnu", "-f", "-", "-C", str(src.parent), "out"], capture_output=True, check=True
    ).stdout
    assert len(tar) < 1024**2
    dest = tmp_path / "dest"
    dest.mkdir()
    stats = extract_tar(tar, "out", dest / "copy")
    assert sorted(os.listdir(dest / "copy")) == ["ok.txt"]
    assert any("huge (sparse file" in s for s in stats.skipped)


def test_garbage_instead_of_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PathError, match="malformed archive"):
        extract_tar(b"\x00garbage" * 200, "out", tmp_path / "copy")


BIG = b"x" * 100_000  # larger than the records tarfile reads ahead


class _Stalling(io.RawIOBase):
    """A tar stream that runs `meanwhile` once, after `after` bytes were read (a bottle stalled mid-copy)."""

    def __init__(self, data: bytes, after: int, meanwhile: Callable[[], None]) -> None:
        self.data, self.pos, self.after, self.meanwhile = data, 0, after, meanwhile

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if self.pos >= self.after and self.meanwhile is not None:
            self.meanwhile()
            self.meanwhile = None  # type: ignore[assignment]
        end = min(len(self.data), self.pos + len(b), max(self.after, self.pos + 1))
        n = end - self.pos
        b[:n] = self.data[self.pos : end]
        self.pos = end
        return n


def _stall(data: bytes, after: int, meanwhile: Callable[[], None]) -> IO[bytes]:
    return cast(IO[bytes], _Stalling(data, after, meanwhile))


def test_a_symlink_swapped_in_on_the_host_is_not_followed(tmp_path: Path) -> None:
    # While the copy runs, a folder it is about to enter becomes a symlink out of the destination.
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "copy"
    data = _tar(_dir("out"), _file("out/big", BIG), _dir("out/sub"), _file("out/sub/a.txt"))
    stream = _stall(data, len(BIG) // 2, lambda: (dest / "sub").symlink_to(outside))
    with pytest.raises(PathError, match="cannot enter"):
        extract_stream(stream, "out", dest)
    assert os.listdir(outside) == []
    assert os.path.islink(dest / "sub")  # not ours: left where it is (only what the copy made is removed)


def test_a_file_that_appears_at_the_destination_mid_copy_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "copy"

    def person() -> None:
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")

    for data in (_tar(_file("out", b"from the bottle")), _tar(_dir("out"), _file("out/a.txt"))):
        with pytest.raises(PathError, match="appeared"):
            extract_stream(_stall(data, 0, person), "out", dest)
        assert (dest / "notes.txt").read_text() == "mine"
        (dest / "notes.txt").unlink()
        dest.rmdir()


def test_on_failure_only_what_the_copy_made_is_removed(tmp_path: Path) -> None:
    dest = tmp_path / "copy"

    def person() -> None:
        (dest / "sub" / "theirs.txt").write_text("keep")

    data = _tar(_dir("out"), _dir("out/sub"), _file("out/sub/big", BIG), _file("out/sub/a.txt"), _file("out/sub/a.txt"))
    with pytest.raises(PathError, match="twice"):
        extract_stream(_stall(data, len(BIG) // 2, person), "out", dest)
    assert sorted(os.listdir(dest / "sub")) == ["theirs.txt"]  # a.txt (ours) went, theirs stayed


def test_nothing_is_written_in_or_as_a_git_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "repo" / ".git" / "hooks").mkdir(parents=True)
    (root / "bare.git" / "objects").mkdir(parents=True)
    (root / "bare.git" / "refs").mkdir()
    (root / "bare.git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "repo" / "link").symlink_to(root / "repo" / ".git")
    for raw in ("repo/.git/hooks/post-commit", "repo/.git", "repo/.GIT", "repo/link/x", "bare.git/hooks/x"):
        with pytest.raises(PathError, match="git"):
            confine_host_dest(raw, [root])
    assert confine_host_dest("repo/new", [root])[0] == root / "repo" / "new"
    hook = b"#!/bin/sh\necho pwned\n"
    data = _tar(_dir("out"), _dir("out/.git"), _dir("out/.git/hooks"), _file("out/.git/hooks/post-commit", hook))
    stats = extract_tar(data, "out", root / "repo" / "new")
    assert os.listdir(root / "repo" / "new") == []
    assert any(".git" in s for s in stats.skipped)


def test_executable_bits_are_dropped_unless_kept(tmp_path: Path) -> None:
    data = _tar(_file("tool", b"#!/bin/sh\n"))  # mode 4755 in the archive
    extract_tar(data, "tool", tmp_path / "plain")
    extract_tar(data, "tool", tmp_path / "kept", keep_exec=True)
    assert stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) & 0o7111 == 0
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) & 0o7000 == 0
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) & 0o100


def test_destination_must_be_new_and_under_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "results").mkdir(parents=True)
    (root / "taken").write_text("x")
    (root / "escape").symlink_to(tmp_path)
    (tmp_path / "root-evil").mkdir()
    assert confine_host_dest("results/new.txt", [root]) == (root / "results" / "new.txt", root)
    assert confine_host_dest(str(root / "new"), [root])[0] == root / "new"
    for raw, match in [
        ("taken", "already exists"),
        ("escape/x", "outside the allowed roots"),
        (str(tmp_path / "root-evil" / "x"), "outside the allowed roots"),
        ("../x", "outside the allowed roots"),
        ("missing/x", "does not exist"),
        ("results/..", "new file or folder name"),
        ("", "empty"),
    ]:
        with pytest.raises(PathError, match=match):
            confine_host_dest(raw, [root])
