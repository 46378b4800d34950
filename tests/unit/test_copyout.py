"""Copies out of a bottle: the host destination is confined and every tar member is distrusted."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from bottle_mcp.copyout import confine_host_dest, extract_tar
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
    extract_tar(_tar(_file("tool")), "tool", tmp_path / "tool")
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


def test_a_symlink_swapped_in_on_the_host_is_not_followed(tmp_path: Path) -> None:
    # A folder the copy is about to enter is already a symlink out of the destination.
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    dest = root / "copy"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    from bottle_mcp.copyout import ExtractStats, _open_dirs

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(PathError, match="cannot enter"):
            _open_dirs(fd, ("copy", "sub"), ExtractStats(), dest)
    finally:
        os.close(fd)
    assert os.listdir(outside) == []


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
