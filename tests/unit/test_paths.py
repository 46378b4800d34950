"""Host-path confinement and tar packing: nothing outside the allowed roots reaches a bottle."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from bottle_mcp.errors import PathError
from bottle_mcp.paths import PackStats, TarEntry, check_bottle_path, confine_host_path, pack_tar, tree_size

SECRET = b"outside-secret-7f3a9c"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = (tmp_path / "allowed").resolve()
    r.mkdir()
    (r / "file.txt").write_text("inside\n")
    (r / "dir").mkdir()
    (r / "dir" / "nested.txt").write_text("nested\n")
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = (tmp_path / "outside").resolve()
    o.mkdir()
    (o / "secret.txt").write_bytes(SECRET)
    return o


def pack(entries: list[TarEntry], **kw: int) -> tuple[bytes, PackStats]:
    with pack_tar(entries, **kw) as (tar, stats):
        return tar.read(), stats


def pack_tree(source: Path, root: Path, arcname: str = "copy", **kw: int) -> tuple[bytes, PackStats]:
    return pack([TarEntry(arcname=arcname, source=source, root=root)], **kw)


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tf:
        return {m.name: m for m in tf.getmembers()}


def contents(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


# -- confine_host_path ---------------------------------------------------------------------------


def test_relative_path_starts_at_the_first_root(root: Path) -> None:
    assert confine_host_path("dir/nested.txt", [root]) == (root / "dir" / "nested.txt", root)


def test_absolute_path_under_a_later_root_names_that_root(root: Path, outside: Path) -> None:
    assert confine_host_path(str(outside / "secret.txt"), [root, outside]) == (outside / "secret.txt", outside)


def test_the_root_itself_may_be_copied(root: Path) -> None:
    assert confine_host_path(str(root), [root]) == (root, root)
    assert confine_host_path(".", [root]) == (root, root)


def test_dot_dot_inside_the_root_is_normalised(root: Path) -> None:
    assert confine_host_path("dir/../file.txt", [root])[0] == root / "file.txt"


@pytest.mark.parametrize("raw", ["..", "../outside/secret.txt", "dir/../../outside/secret.txt"])
def test_dot_dot_leaving_the_root_is_refused(root: Path, outside: Path, raw: str) -> None:
    with pytest.raises(PathError, match="outside the allowed roots") as info:
        confine_host_path(raw, [root])
    assert str(root) in str(info.value)
    assert "[host] roots" in str(info.value)


@pytest.mark.parametrize("raw", ["/etc/passwd", "/", "~"])
def test_absolute_path_outside_the_roots_is_refused(root: Path, raw: str) -> None:
    with pytest.raises(PathError, match="outside the allowed roots"):
        confine_host_path(raw, [root])


def test_sibling_with_the_root_as_name_prefix_is_refused(root: Path) -> None:
    evil = root.parent / (root.name + "-evil")
    evil.mkdir()
    (evil / "secret.txt").write_bytes(SECRET)
    assert str(evil).startswith(str(root))
    with pytest.raises(PathError, match="outside the allowed roots"):
        confine_host_path(str(evil / "secret.txt"), [root])
    with pytest.raises(PathError, match="outside the allowed roots"):
        confine_host_path(f"../{evil.name}/secret.txt", [root])


def test_symlink_leaving_the_root_is_refused(root: Path, outside: Path) -> None:
    (root / "link-file").symlink_to(outside / "secret.txt")
    (root / "link-dir").symlink_to(outside)
    (root / "dir" / "relative").symlink_to("../../outside")
    for raw in ("link-file", "link-dir", "link-dir/secret.txt", "dir/relative/secret.txt"):
        with pytest.raises(PathError, match="outside the allowed roots"):
            confine_host_path(raw, [root])


def test_symlink_within_the_root_resolves_to_its_target(root: Path) -> None:
    (root / "alias").symlink_to("dir")
    assert confine_host_path("alias/nested.txt", [root]) == (root / "dir" / "nested.txt", root)


def test_nonexistent_path_under_the_root_says_it_does_not_exist(root: Path) -> None:
    with pytest.raises(PathError, match="does not exist"):
        confine_host_path("missing.txt", [root])


def test_nonexistent_path_outside_the_root_is_refused_as_outside(root: Path) -> None:
    with pytest.raises(PathError, match="outside the allowed roots"):
        confine_host_path("/nonexistent-bottle-mcp/x", [root])


@pytest.mark.parametrize("raw", ["", "file.txt\x00", "\x00/etc/passwd"])
def test_empty_path_or_nul_byte_is_refused(root: Path, raw: str) -> None:
    with pytest.raises(PathError, match="NUL"):
        confine_host_path(raw, [root])


# -- check_bottle_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/workspace/data", "/workspace/data"), ("/workspace//a/./b", "/workspace/a/b"), ("/tmp/", "/tmp")],
)
def test_bottle_path_is_absolute_and_normalised(raw: str, expected: str) -> None:
    assert check_bottle_path(raw) == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("workspace/data", "must be absolute"),
        ("/workspace/../etc/passwd", "contains '..'"),
        ("/", "may not be '/'"),
        ("", "empty"),
        ("/workspace/a\x00b", "NUL"),
        ("/workspace/a\nb", "newline"),
    ],
)
def test_bad_bottle_path_is_refused_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(PathError, match=reason):
        check_bottle_path(raw)


def test_bottle_path_errors_name_the_argument() -> None:
    with pytest.raises(PathError, match=r"^workdir "):
        check_bottle_path("relative", what="workdir")


# -- pack_tar ------------------------------------------------------------------------------------


def test_a_single_file_is_packed_under_its_new_name(root: Path) -> None:
    data, stats = pack_tree(root / "file.txt", root, arcname="renamed.txt")
    assert list(members(data)) == ["renamed.txt"]
    assert contents(data, "renamed.txt") == b"inside\n"
    assert (stats.files, stats.directories, stats.symlinks, stats.bytes) == (1, 0, 0, 7)


def test_a_folder_is_packed_recursively_with_counts(root: Path) -> None:
    data, stats = pack_tree(root, root, arcname="copy")
    assert set(members(data)) == {"copy", "copy/file.txt", "copy/dir", "copy/dir/nested.txt"}
    assert members(data)["copy/dir"].isdir()
    assert contents(data, "copy/dir/nested.txt") == b"nested\n"
    assert (stats.files, stats.directories, stats.symlinks, stats.bytes) == (2, 2, 0, 14)


def test_literal_bytes_entries_are_packed_with_their_mode() -> None:
    data, stats = pack([TarEntry(arcname="prompt.md", data=b"Be brief.", mode=0o600)])
    assert contents(data, "prompt.md") == b"Be brief."
    assert members(data)["prompt.md"].mode == 0o600
    assert stats.files == 1


def test_symlinks_inside_the_root_are_kept_as_links(root: Path) -> None:
    (root / "dir" / "up").symlink_to("../file.txt")
    (root / "dangling").symlink_to("not-there")
    data, stats = pack_tree(root, root)
    m = members(data)
    assert m["copy/dir/up"].issym() and m["copy/dir/up"].linkname == "../file.txt"
    assert m["copy/dangling"].issym() and m["copy/dangling"].linkname == "not-there"
    assert stats.symlinks == 2


@pytest.mark.parametrize("target", ["absolute", "../../outside/secret.txt", "chain"])
def test_symlinks_leaving_the_root_are_refused(root: Path, outside: Path, target: str) -> None:
    link = root / "dir" / "escape"
    if target == "absolute":
        link.symlink_to(outside / "secret.txt")
    elif target == "chain":
        (root / "hop").symlink_to(outside)
        link.symlink_to("../hop/secret.txt")
    else:
        link.symlink_to(target)
    with pytest.raises(PathError, match="leaves") as info:
        pack_tree(root, root)
    assert "copy/dir/escape" in str(info.value)
    assert "remove the link or copy its target instead" in str(info.value)


def test_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "dir" / "pipe")
    with pytest.raises(PathError, match="not a regular file, folder or symlink"):
        pack_tree(root, root)


def test_unix_socket_is_refused(root: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
        with pytest.raises(PathError, match="not a regular file, folder or symlink"):
            pack_tree(root, root)


def test_copy_over_the_size_limit_is_refused(root: Path) -> None:
    (root / "dir" / "big.bin").write_bytes(b"x" * 4096)
    with pytest.raises(PathError, match="larger than the limit of 4000 bytes"):
        pack_tree(root, root, max_bytes=4000)
    _data, stats = pack_tree(root, root, max_bytes=4096 + 14)
    assert stats.bytes == 4096 + 14


def test_literal_bytes_count_against_the_size_limit() -> None:
    with pytest.raises(PathError, match="larger than the limit"):
        pack([TarEntry(arcname="a", data=b"x" * 11)], max_bytes=10)


def test_modes_keep_permission_bits_but_drop_setuid_setgid_and_sticky(root: Path) -> None:
    tool = root / "dir" / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o4755)
    (root / "dir").chmod(0o3775)
    (root / "file.txt").chmod(0o2640)
    try:
        m = members(pack_tree(root, root)[0])
    finally:
        (root / "dir").chmod(0o755)
    assert m["copy/dir/tool"].mode == 0o755
    assert m["copy/dir"].mode == 0o775
    assert m["copy/file.txt"].mode == 0o640
    for info in m.values():
        assert info.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX) == 0


def test_owners_are_zeroed_and_unnamed(root: Path) -> None:
    if os.geteuid() == 0:
        os.chown(root / "file.txt", 4242, 4343)
    assert (root / "file.txt").stat().st_uid != 0
    for info in members(pack_tree(root, root)[0]).values():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")


def test_a_folder_swapped_for_a_symlink_after_confinement_cannot_redirect_the_read(root: Path, outside: Path) -> None:
    (root / "dir" / "secret.txt").write_text("harmless\n")
    src, r = confine_host_path("dir/secret.txt", [root])
    # After the check, `dir` is replaced by a link to a folder outside holding a file of the same name.
    os.rename(root / "dir", root / "dir.old")
    (root / "dir").symlink_to(outside)
    with pytest.raises((OSError, PathError)):
        pack_tree(src, r)


def test_a_grandparent_swapped_for_a_symlink_is_caught_by_the_opened_file_check(root: Path, outside: Path) -> None:
    (outside / "dir").mkdir()
    (outside / "dir" / "nested.txt").write_bytes(SECRET)
    (root / "inner").mkdir()
    os.rename(root / "dir", root / "inner" / "dir")
    src, r = confine_host_path("inner/dir/nested.txt", [root])
    # The swap happens one level above the file's folder, where O_NOFOLLOW does not look.
    os.rename(root / "inner", root / "inner.old")
    (root / "inner").symlink_to(outside)
    with pytest.raises(PathError, match="outside"):
        pack_tree(src, r)


# -- races while a folder is being packed -----------------------------------------------------------


@pytest.fixture
def swap_on(monkeypatch: pytest.MonkeyPatch, root: Path, outside: Path) -> Callable[[str], list[bool]]:
    """Patch an os function so that, right after it looks at `root/dir`, `dir` becomes a link to outside."""

    def install(fn_name: str) -> list[bool]:
        real: Callable[..., Any] = getattr(os, fn_name)
        swapped: list[bool] = []

        def swap() -> None:
            if not swapped:
                os.rename(root / "dir", root / "dir.moved")
                (root / "dir").symlink_to(outside)
                swapped.append(True)

        def hooked(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if fn_name == "listdir" and "dir" in result:
                swap()
            if fn_name == "stat" and args and args[0] == "dir" and kwargs.get("dir_fd") is not None:
                swap()
            return result

        monkeypatch.setattr(os, fn_name, hooked)
        return swapped

    return install


@pytest.mark.parametrize("window", ["listdir", "stat"], ids=["after-listing", "between-stat-and-open"])
def test_folder_swapped_for_an_outside_link_during_packing_leaks_nothing(
    root: Path, swap_on: Callable[[str], list[bool]], window: str
) -> None:
    swapped = swap_on(window)
    leaked = b""
    with (
        pytest.raises((OSError, PathError)),
        pack_tar([TarEntry(arcname="copy", source=root, root=root)]) as (tar, _stats),
    ):
        leaked = tar.read()
    assert swapped == [True]
    assert SECRET not in leaked


def test_folder_swapped_between_stat_and_open_is_reported_as_a_path_error(
    root: Path, swap_on: Callable[[str], list[bool]]
) -> None:
    swap_on("stat")
    with pytest.raises(PathError), pack_tar([TarEntry(arcname="copy", source=root, root=root)]):
        pass


def test_folder_flipping_to_an_outside_link_in_a_thread_never_leaks(root: Path, outside: Path) -> None:
    (outside / "nested.txt").write_bytes(SECRET)
    stop, flipping = threading.Event(), threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.rename(root / "dir", root / "dir.real")
            (root / "dir").symlink_to(outside)
            flipping.set()
            (root / "dir").unlink()
            os.rename(root / "dir.real", root / "dir")

    thread = threading.Thread(target=flip)
    thread.start()
    outcomes: dict[str, int] = {}
    try:
        assert flipping.wait(timeout=10)
        for _ in range(300):
            try:
                data, _stats = pack_tree(root, root)
            except (OSError, PathError) as e:  # refused, or the kernel would not follow a link
                outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
                continue
            assert SECRET not in data
            outcomes["packed"] = outcomes.get("packed", 0) + 1
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert (root / "dir").is_dir() and not (root / "dir").is_symlink(), "the flipping thread died half-way"
    assert sum(outcomes.values()) == 300


# -- tree_size -------------------------------------------------------------------------------------


def test_tree_size_counts_files_and_bytes_without_following_links(root: Path, outside: Path) -> None:
    (root / "dir" / "out").symlink_to(outside)
    (root / "flink").symlink_to(outside / "secret.txt")
    assert tree_size(root) == (3, 14)
