"""Host-path confinement and tar packing for copies into a bottle.

The supervising agent names host paths; only those under the roots the human
configured may be read. Checks compare resolved path components (so
`/allowed-evil` is not under `/allowed`), and every file is opened relative to
an already-opened directory with O_NOFOLLOW, so a symlink swapped in during
the copy cannot redirect a read outside the root.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import PathError

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def confine_host_path(raw: str, roots: list[Path]) -> tuple[Path, Path]:
    """Resolve a caller-supplied host path; return (resolved path, the root that holds it).

    Relative paths start at the first root. Raises PathError naming the roots when the
    path is outside all of them or does not exist.
    """
    if not raw or "\x00" in raw:
        raise PathError("host_path is empty or contains a NUL byte; pass a path under the allowed roots")
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = roots[0] / p
    resolved = Path(os.path.realpath(p))
    allowed = ", ".join(str(r) for r in roots)
    for root in roots:
        if _within(resolved, root):
            if not os.path.lexists(resolved):
                raise PathError(f"host path {raw!r} does not exist (resolved to {str(resolved)!r})")
            return resolved, root
    raise PathError(
        f"host path {raw!r} resolves to {str(resolved)!r}, which is outside the allowed roots ({allowed}); "
        "copy only from those folders, or ask the human to add a root to [host] roots in the manifest"
    )


def check_bottle_path(raw: str, *, what: str = "bottle_path") -> PurePosixPath:
    """An absolute, normalized path inside the bottle with no '..' components."""
    if not raw or "\x00" in raw or "\n" in raw:
        raise PathError(f"{what} is empty or contains NUL or newline characters")
    p = PurePosixPath(raw)
    if not p.is_absolute():
        raise PathError(f"{what} {raw!r} must be absolute, e.g. '/workspace/input.txt'")
    if ".." in p.parts:
        raise PathError(f"{what} {raw!r} contains '..'; write the path without it")
    if p == PurePosixPath("/"):
        raise PathError(f"{what} may not be '/'; name a file or folder, e.g. '/workspace/data'")
    return p


@dataclass
class PackStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class TarEntry:
    """One thing to put into a tar: a host tree (confined to root) or literal bytes."""

    arcname: str
    source: Path | None = None
    root: Path | None = None
    data: bytes | None = None
    mode: int = 0o644


class _Packer:
    def __init__(self, tar: tarfile.TarFile, stats: PackStats, max_bytes: int) -> None:
        self.tar = tar
        self.stats = stats
        self.max_bytes = max_bytes

    def _info(self, name: str, st: os.stat_result | None, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = (stat.S_IMODE(st.st_mode) & 0o777) if st else 0o644
        info.mtime = int(st.st_mtime) if st else 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def _count(self, n: int) -> None:
        self.stats.bytes += n
        if self.stats.bytes > self.max_bytes:
            raise PathError(f"the copy is larger than the limit of {self.max_bytes} bytes; copy a smaller folder")

    def add_bytes(self, arcname: str, data: bytes, mode: int) -> None:
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = mode
        self._count(len(data))
        self.tar.addfile(info, io.BytesIO(data))
        self.stats.files += 1

    def add_tree(self, source: Path, root: Path, arcname: str) -> None:
        try:
            parent_fd = os.open(source.parent, _OPEN_DIR)
            try:
                self._add_entry(parent_fd, source.name, arcname, root)
            finally:
                os.close(parent_fd)
        except PathError:
            raise
        except OSError as e:
            where = f" ({e.filename!r})" if e.filename else ""
            raise PathError(
                f"{arcname!r} changed or vanished during the copy{where}: {e.strerror}; retry the copy"
            ) from None

    def _check_fd(self, fd: int, root: Path, shown: str) -> None:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not _within(real, root):
            raise PathError(f"{shown!r} now resolves to {str(real)!r}, outside {str(root)!r}; refusing the copy")

    def _add_entry(self, dir_fd: int, name: str, arcname: str, root: Path) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
            here = Path(os.readlink(f"/proc/self/fd/{dir_fd}"))
            if not _within(Path(os.path.realpath(here / target)), root):
                raise PathError(
                    f"{arcname!r} is a symlink to {target!r}, which leaves {str(root)!r}; "
                    "remove the link or copy its target instead"
                )
            info = self._info(arcname, st, tarfile.SYMTYPE)
            info.linkname = target
            self.tar.addfile(info)
            self.stats.symlinks += 1
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
            try:
                self._check_fd(fd, root, arcname)
                self.tar.addfile(self._info(arcname, os.fstat(fd), tarfile.DIRTYPE))
                self.stats.directories += 1
                for child in sorted(os.listdir(fd)):
                    self._add_entry(fd, child, f"{arcname}/{child}", root)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as f:
                fst = os.fstat(f.fileno())
                if not stat.S_ISREG(fst.st_mode):
                    raise PathError(f"{arcname!r} changed type during the copy; refusing it")
                self._check_fd(f.fileno(), root, arcname)
                info = self._info(arcname, fst, tarfile.REGTYPE)
                info.size = fst.st_size
                self._count(fst.st_size)
                self.tar.addfile(info, f)
                self.stats.files += 1
        else:
            raise PathError(f"{arcname!r} is not a regular file, folder or symlink (device, fifo or socket)")


def packed_tar(entries: list[TarEntry], *, max_bytes: int = 2 * 1024**3) -> tuple[IO[bytes], PackStats]:
    """Pack entries into a temporary tar file (in memory while small); return it rewound, and its stats.

    Blocking and possibly slow (up to `max_bytes` read from disk): run it in a worker thread.
    The caller closes the file.
    """
    stats = PackStats()
    buf = tempfile.SpooledTemporaryFile(max_size=16 * 1024**2)  # noqa: SIM115 - handed to the caller
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            packer = _Packer(tar, stats, max_bytes)
            for entry in entries:
                if entry.data is not None:
                    packer.add_bytes(entry.arcname, entry.data, entry.mode)
                else:
                    assert entry.source is not None
                    assert entry.root is not None
                    packer.add_tree(entry.source, entry.root, entry.arcname)
        buf.seek(0)
    except BaseException:
        buf.close()
        raise
    return buf, stats


@contextmanager
def pack_tar(entries: list[TarEntry], *, max_bytes: int = 2 * 1024**3) -> Iterator[tuple[IO[bytes], PackStats]]:
    """`packed_tar` as a context manager that closes the file (on the calling thread)."""
    buf, stats = packed_tar(entries, max_bytes=max_bytes)
    with buf:
        yield buf, stats


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) of a host tree, without following symlinks."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            files += 1
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, total
