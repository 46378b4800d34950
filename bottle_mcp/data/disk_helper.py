"""Give a bottle a file system of a fixed size: run as root in a short-lived helper container.

    disk_helper.py check                    can this engine hand out loop devices?
    disk_helper.py make SIZE UID GID        make /disk/image (sparse, SIZE bytes) an ext4 file system
                                            owned by UID:GID at its root, attach it to a free loop
                                            device and print "DISK-DEVICE /dev/loopN"
    disk_helper.py format SIZE UID GID      only make the file system and print "DISK-FORMATTED ok":
                                            for an engine whose volumes attach it themselves (Podman
                                            mounts through mount(8), which understands `loop`); this
                                            needs no capability and no device

The loop device is attached with autoclear: it lives while something holds it. This process holds it
until the engine has mounted it (as the bottle's workspace volume) and the server removes this
container; from then on the mount holds it, and when the engine unmounts the volume (the bottle is
removed) the kernel detaches the device by itself, so a crash of the server leaks no loop device.
The kernel enforces the size: a write past it fails with ENOSPC. Nothing of the project is imported.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys
import time

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LOOP_MAJOR = 7
IMAGE = "/disk/image"
HOLD_S = 300  # the server removes this container long before; a crashed server's helper still ends


def _free_loop(ctl: int) -> tuple[int, int]:
    n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    path = f"/dev/loop{n}"
    if not os.path.exists(path):
        os.mknod(path, 0o600 | 0o060000, os.makedev(LOOP_MAJOR, n))
    return n, os.open(path, os.O_RDWR | os.O_CLOEXEC)


def _attach(image: str) -> int:
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    # struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
    info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR, b"", b"", b"", 0, 0)
    config = struct.pack("=II", backing, 0) + info + bytes(64)
    for _ in range(50):
        n, dev = _free_loop(ctl)
        try:
            fcntl.ioctl(dev, LOOP_CONFIGURE, config)
        except OSError as e:
            os.close(dev)
            if e.errno != errno.EBUSY:  # another helper took the same device first: ask again
                raise
            time.sleep(0.02)
            continue
        os.close(backing)
        print(f"DISK-DEVICE /dev/loop{n}", flush=True)
        return dev
    raise SystemExit("no free loop device after 50 attempts")


def main(argv: list[str]) -> None:
    if argv[:1] == ["check"]:
        os.close(os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC))
        print("DISK-CHECK ok", flush=True)
        return
    mode, size, uid, gid = argv
    _format(int(size), uid, gid)
    if mode == "format":
        print("DISK-FORMATTED ok", flush=True)
        return
    dev = _attach(IMAGE)
    time.sleep(HOLD_S)
    os.close(dev)


def _format(size: int, uid: str, gid: str) -> None:
    with open(IMAGE, "wb") as f:
        f.truncate(size)
    # No reserved blocks; one inode per 32 KiB (df then shows ~95% of the size); inode tables are not
    # zeroed (the file is sparse, they read as zeros), so an idle workspace costs the host almost nothing.
    options = f"root_owner={uid}:{gid},lazy_itable_init=1,nodiscard"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "32768", "-E", options, IMAGE], check=True)
    # An empty workspace: lost+found (root's, unreadable) would show up in every listing and git status.
    subprocess.run(["debugfs", "-w", "-R", "rmdir lost+found", IMAGE], check=True, capture_output=True)


if __name__ == "__main__":
    main(sys.argv[1:])
