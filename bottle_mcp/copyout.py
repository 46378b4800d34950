"""Bringing files out of a bottle onto the host, safely.

A tar made inside a bottle is hostile input. Extraction here trusts none of it: every member
name is checked (no absolute paths, no '..', no NUL, nothing outside the one top folder), only
regular files and folders are written (links, devices, fifos and sparse files, which could expand
to far more than the bytes sent, are skipped and reported), modes
lose set-uid/set-gid/sticky bits, and every write goes through directory file descriptors opened
with O_NOFOLLOW below a destination that did not exist before, so nothing can be redirected
outside the root, not even by a symlink swapped in on the host during the copy.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import PathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_MEMBERS = 100_000
SHOWN = 200


def confine_host_dest(raw: str, roots: list[Path]) -> tuple[Path, Path]:
    """Where a copy out may land: (destination, root). The destination must not exist yet and
    its parent folder must resolve, through any symlinks, to a folder under one of the roots."""
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


def extract_tar(data: bytes, top: str, dest: Path) -> ExtractStats:
    """Unpack the tar's `top` entry as `dest` (which must not exist). On any error, remove what was written."""
    stats = ExtractStats()
    parent_fd = os.open(dest.parent, _DIR_FLAGS)
    created = False
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            members, top_member = _read_members(tf, top)
            if top_member.isreg():
                created = True
                _write_file(tf, top_member, parent_fd, dest.name, stats, dest)
                return stats
            os.mkdir(dest.name, 0o755, dir_fd=parent_fd)
            created = True
            stats.directories += 1
            stats.written.append(str(dest))
            for member in members:
                parts = _member_parts(member.name, top)
                if not parts:
                    continue
                shown = "/".join(parts)
                if member.isdir():
                    fd = _open_dirs(parent_fd, (dest.name, *parts), stats, dest)
                    os.close(fd)
                elif member.isreg() and not member.issparse():
                    fd = _open_dirs(parent_fd, (dest.name, *parts[:-1]), stats, dest)
                    try:
                        _write_file(tf, member, fd, parts[-1], stats, dest / shown)
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
                    stats.skipped.append(f"{shown} ({kind}{target}: only files and folders are copied out)")
        return stats
    except tarfile.TarError as e:
        if created:
            _remove(parent_fd, dest.name)
        raise PathError(f"the bottle sent a malformed archive ({e}); nothing was kept") from None
    except BaseException:
        if created:
            _remove(parent_fd, dest.name)
        raise
    finally:
        os.close(parent_fd)


def _read_members(tf: tarfile.TarFile, top: str) -> tuple[list[tarfile.TarInfo], tarfile.TarInfo]:
    members = []
    for n, member in enumerate(tf):
        if n >= MAX_MEMBERS:
            raise PathError(f"the copy has more than {MAX_MEMBERS} entries; copy a smaller folder")
        _member_parts(member.name, top)
        members.append(member)
    top_member = next((m for m in members if _member_parts(m.name, top) == ()), None)
    if top_member is None or not (top_member.isdir() or (top_member.isreg() and not top_member.issparse())):
        kind = "missing" if top_member is None else "not a regular file or folder"
        raise PathError(f"{top!r} is {kind} in the bottle's archive; only files and folders are copied out")
    if top_member.isreg() and len(members) != 1:
        raise PathError("the bottle sent extra members beside a single file")
    return members, top_member


def _open_dirs(base_fd: int, parts: tuple[str, ...], stats: ExtractStats, dest: Path) -> int:
    """Open (creating as needed) the folder base/parts..., never following a symlink."""
    fd = os.dup(base_fd)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                stats.directories += 1
                if len(stats.written) < SHOWN:
                    stats.written.append(str(dest.parent.joinpath(*parts[: i + 1])))
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise PathError(f"cannot enter {'/'.join(parts[: i + 1])!r} while copying out: {e.strerror}") from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _write_file(
    tf: tarfile.TarFile, member: tarfile.TarInfo, dir_fd: int, name: str, stats: ExtractStats, shown: Path
) -> None:
    src = tf.extractfile(member)
    assert src is not None
    mode = 0o755 if member.mode & 0o111 else 0o644
    try:
        fd = os.open(name, _NEW_FILE, mode, dir_fd=dir_fd)
    except FileExistsError:
        raise PathError(f"the bottle sent {str(shown)!r} twice; refusing the copy") from None
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    stats.files += 1
    stats.bytes += member.size
    if len(stats.written) < SHOWN:
        stats.written.append(str(shown))


def _remove(parent_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
