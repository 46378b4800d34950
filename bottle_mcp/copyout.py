"""Bringing files out of a bottle onto the host, safely.

A tar made inside a bottle is hostile input. Extraction here trusts none of it: every member
name is checked (no absolute paths, no '..', no NUL, nothing outside the one top folder), only
regular files and folders are written (links, devices, fifos and sparse files, which could expand
to far more than the bytes sent, are skipped and reported), modes lose set-uid/set-gid/sticky bits
(and executable bits unless the manifest keeps them for the root), nothing is written in or as a
.git folder or inside any git repository folder (git would run hooks and settings from there),
and every write is an exclusive creation through directory file descriptors opened with
O_NOFOLLOW below a destination that did not exist before, so nothing can be redirected outside the
root, not even by a symlink swapped in on the host during the copy. The tar is read as a stream.
On failure only what the copy created is removed (see extract_stream).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import PathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_MEMBERS = 100_000
SHOWN = 200


GIT_DIR_NAME = ".git"


def _is_git_name(name: str) -> bool:
    # Case-folded, and without the trailing dots and spaces some file systems drop.
    return name.casefold().rstrip(". ") == GIT_DIR_NAME


def _looks_like_git_dir(path: Path) -> bool:
    """What git itself takes for a repository folder (any name, bare ones too): HEAD, objects/ and refs/."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def check_not_git(dest: Path, root: Path) -> None:
    """Refuse a destination inside a git folder (or named .git): git runs hooks and config from there."""
    where = dest.relative_to(root) if dest.is_relative_to(root) else dest
    if any(_is_git_name(part) for part in (*root.parts, *where.parts)):
        raise PathError(
            f"host path {str(dest)!r} is in or names a .git folder; cp_out never writes there (git would run hooks "
            "and settings from it). Copy to a folder outside .git and review the files first"
        )
    folder = dest.parent
    while True:
        if _looks_like_git_dir(folder):
            raise PathError(
                f"host path {str(dest)!r} is inside the git repository folder {str(folder)!r}; cp_out never writes "
                "there (git would run hooks and settings from it). Copy to an ordinary folder instead"
            )
        if folder in (root, folder.parent):
            return
        folder = folder.parent


def confine_host_dest(raw: str, roots: list[Path]) -> tuple[Path, Path]:
    """Where a copy out may land: (destination, root). The destination must not exist yet, its parent folder
    must resolve, through any symlinks, to a folder under one of the roots, and no part of it is a git folder."""
    if not raw or "\x00" in raw:
        raise PathError("host_path is empty or contains a NUL byte; name a new path under the allowed roots")
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = roots[0] / p
    if p.name in {"", ".", ".."}:
        raise PathError(f"host_path {raw!r} must end in a new file or folder name, e.g. 'results/report.md'")
    parent = Path(os.path.realpath(p.parent))
    allowed = ", ".join(str(r) for r in roots)
    root = next((r for r in roots if parent == r or parent.is_relative_to(r)), None)
    if root is None:
        raise PathError(
            f"host path {raw!r} lies in {str(parent)!r}, outside the allowed roots ({allowed}); copy only into "
            "those folders, or ask the human to add a root to [host] roots in the manifest"
        )
    if not parent.is_dir():
        raise PathError(f"the folder {str(parent)!r} for host path {raw!r} does not exist; create it first")
    dest = parent / p.name
    check_not_git(dest, root)
    if os.path.lexists(dest):
        raise PathError(
            f"host path {str(dest)!r} already exists; cp_out never overwrites: pick a new name or remove it first"
        )
    return dest, root


@dataclass
class ExtractStats:
    files: int = 0
    directories: int = 0
    bytes: int = 0
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _member_parts(name: str, top: str) -> tuple[str, ...]:
    """The member's path below the top folder, or PathError when it is not a clean relative path there."""
    if "\x00" in name or "\\" in name:
        raise PathError(f"the bottle sent a tar member with a forbidden character: {name[:100]!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise PathError(f"the bottle sent a tar member that escapes its folder: {name[:100]!r}")
    parts = tuple(x for x in p.parts if x != ".")
    if not parts or parts[0] != top:
        raise PathError(f"the bottle sent a tar member outside {top!r}: {name[:100]!r}")
    return parts[1:]


def extract_tar(data: bytes, top: str, dest: Path, *, keep_exec: bool = False) -> ExtractStats:
    """Unpack a tar held in memory (see extract_stream)."""
    return extract_stream(io.BytesIO(data), top, dest, keep_exec=keep_exec)


def extract_stream(stream: IO[bytes], top: str, dest: Path, *, keep_exec: bool = False) -> ExtractStats:
    """Unpack the tar stream's `top` entry as `dest`, reading it once, front to back (never held whole).

    `dest` is created with an exclusive open under a handle on its parent folder, only when the first
    member arrives: if anything stands there by then, nothing is touched. On any error exactly what this
    call created is removed, found again through the handles and checked by inode, never by name alone.
    Without `keep_exec` files lose their executable bits.
    """
    ex = _Extraction(dest, keep_exec)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            ex.run(tf, top)
        return ex.stats
    except tarfile.TarError as e:
        ex.undo()
        raise PathError(f"the bottle sent a malformed archive ({e}); nothing was kept") from None
    except BaseException:
        ex.undo()
        raise
    finally:
        ex.close()


@dataclass(frozen=True)
class _Made:
    parts: tuple[str, ...]  # below dest; () is dest itself
    dev: int
    ino: int
    is_dir: bool


class _Extraction:
    def __init__(self, dest: Path, keep_exec: bool) -> None:
        self.dest = dest
        self.keep_exec = keep_exec
        self.stats = ExtractStats()
        self.made: list[_Made] = []
        self.git_skipped: set[tuple[str, ...]] = set()
        self.parent_fd = os.open(dest.parent, _DIR_FLAGS)
        self.top_fd: int | None = None

    def close(self) -> None:
        if self.top_fd is not None:
            os.close(self.top_fd)
        os.close(self.parent_fd)

    def _record(self, parts: tuple[str, ...], fd: int, is_dir: bool) -> None:
        st = os.fstat(fd)
        self.made.append(_Made(parts, st.st_dev, st.st_ino, is_dir))

    def _appeared(self) -> PathError:
        return PathError(
            f"host path {str(self.dest)!r} appeared while the bottle was packing the copy; cp_out never overwrites "
            "and touched nothing there: pick a new name"
        )

    def run(self, tf: tarfile.TarFile, top: str) -> None:
        first = tf.next()
        if first is None or _member_parts(first.name, top) != ():
            shown = "missing" if first is None else f"not first (the archive starts with {first.name[:100]!r})"
            raise PathError(f"{top!r} is {shown} in the bottle's archive; only files and folders are copied out")
        if first.isreg() and not first.issparse():
            self._write_file(tf, first, self.parent_fd, self.dest.name, ())
            if tf.next() is not None:
                raise PathError("the bottle sent extra members beside a single file")
            return
        if not first.isdir():
            raise PathError(f"{top!r} is not a regular file or folder in the bottle; only those are copied out")
        try:
            os.mkdir(self.dest.name, 0o755, dir_fd=self.parent_fd)
        except FileExistsError:
            raise self._appeared() from None
        fd = os.open(self.dest.name, _DIR_FLAGS, dir_fd=self.parent_fd)
        if os.listdir(fd):  # replaced between our mkdir and our open: not ours
            os.close(fd)
            raise self._appeared()
        self.top_fd = fd
        self._record((), fd, True)
        self.stats.directories += 1
        self.stats.written.append(str(self.dest))
        for n, member in enumerate(tf, start=1):
            if n >= MAX_MEMBERS:
                raise PathError(f"the copy has more than {MAX_MEMBERS} entries; copy a smaller folder")
            self._member(tf, member, top)

    def _member(self, tf: tarfile.TarFile, member: tarfile.TarInfo, top: str) -> None:
        parts = _member_parts(member.name, top)
        if not parts:
            return
        shown = "/".join(parts)
        git_at = next((i for i, p in enumerate(parts) if _is_git_name(p)), None)
        if git_at is not None:
            prefix = parts[: git_at + 1]
            if prefix not in self.git_skipped:  # reported once, with everything below it
                self.git_skipped.add(prefix)
                self._skip(f"{'/'.join(prefix)} (a .git folder or file, and all in it: cp_out never writes there)")
        elif member.isdir():
            os.close(self._open_dirs(parts))
        elif member.isreg() and not member.issparse():
            fd = self._open_dirs(parts[:-1])
            try:
                self._write_file(tf, member, fd, parts[-1], parts)
            finally:
                os.close(fd)
        else:
            kind = (
                "symlink"
                if member.issym()
                else "hard link"
                if member.islnk()
                else "sparse file"
                if member.issparse()
                else "special file"
            )
            target = f" -> {member.linkname[:100]}" if member.issym() or member.islnk() else ""
            self._skip(f"{shown} ({kind}{target}: only files and folders are copied out)")

    def _skip(self, what: str) -> None:
        if len(self.stats.skipped) < SHOWN:
            self.stats.skipped.append(what)

    def _open_dirs(self, parts: tuple[str, ...]) -> int:
        """Open (creating as needed) the folder dest/parts..., never following a symlink."""
        assert self.top_fd is not None
        fd = os.dup(self.top_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    self._record(parts[: i + 1], nxt, True)
                    self.stats.directories += 1
                    if len(self.stats.written) < SHOWN:
                        self.stats.written.append(str(self.dest.joinpath(*parts[: i + 1])))
                except OSError as e:
                    raise PathError(
                        f"cannot enter {'/'.join(parts[: i + 1])!r} while copying out: {e.strerror}"
                    ) from None
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _write_file(
        self, tf: tarfile.TarFile, member: tarfile.TarInfo, dir_fd: int, name: str, parts: tuple[str, ...]
    ) -> None:
        src = tf.extractfile(member)
        assert src is not None
        # Never set-uid, set-gid or sticky; executable only where the manifest keeps it for this root.
        mode = 0o755 if self.keep_exec and member.mode & 0o111 else 0o644
        shown = self.dest.joinpath(*parts)
        try:
            fd = os.open(name, _NEW_FILE, mode, dir_fd=dir_fd)
        except FileExistsError:
            if not parts:
                raise self._appeared() from None
            raise PathError(f"the bottle sent {str(shown)!r} twice; refusing the copy") from None
        with os.fdopen(fd, "wb") as out:
            self._record(parts, out.fileno(), False)
            shutil.copyfileobj(src, out, 1 << 20)
        self.stats.files += 1
        self.stats.bytes += member.size
        if len(self.stats.written) < SHOWN:
            self.stats.written.append(str(shown))

    def undo(self) -> None:
        """Remove what this call created, newest first, each only if the name still holds that very inode."""
        for made in reversed(self.made):
            with contextlib.suppress(OSError):
                if made.parts:
                    if self.top_fd is None:
                        continue
                    fd = _walk(self.top_fd, made.parts[:-1])
                    name = made.parts[-1]
                else:
                    fd, name = os.dup(self.parent_fd), self.dest.name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) != (made.dev, made.ino):
                        continue  # not what we made: leave it
                    if made.is_dir:
                        os.rmdir(name, dir_fd=fd)  # fails, and keeps it, if something else was put inside
                    else:
                        os.unlink(name, dir_fd=fd)
                finally:
                    os.close(fd)


def _walk(base_fd: int, parts: tuple[str, ...]) -> int:
    """Open base/parts... without creating anything or following a symlink."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise
