"""A hard disk limit per bottle: its workspace is a file system of its own size.

Everything a bottle can write that lands on the engine's disk is its workspace volume (the root is
read-only; /tmp and the home are size-limited tmpfs, which is memory; the container's log is
bounded). So the workspace is made a file system of exactly the manifest's `disk` size:

    disk volume      an engine volume holding one sparse file, `image`, of `disk` bytes
    helper           a short-lived container (root, only CAP_MKNOD, the loop devices, no network)
                     that makes `image` an ext4 file system owned by the bottle's user and
                     attaches it to a free loop device with autoclear
    work volume      a local-driver volume of type ext4 on that loop device: the engine mounts it
                     when the bottle starts; the kernel enforces the size (ENOSPC), `df` shows it

The helper holds the loop device until the bottle has started (then the mount holds it) and is
removed; when the engine unmounts the volume (the bottle is removed, or cleaned up after a crash)
the kernel detaches the device by itself, and removing the disk volume frees the file. All of it
goes through the engine's API, so a remote engine works the same, provided its kernel has loop
devices and the engine mounts as root (a rootless engine cannot mount ext4: no limit there).

The host loses at most `disk` bytes for the image (the file is sparse and cannot grow past its
size) plus a few KiB of volume metadata.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from importlib import resources

import anyio
import anyio.to_thread
import docker

from ... import labels as L
from ...errors import EngineError, EngineNotFoundError, LaunchError
from ...manifest import LoadedManifest
from ..base import Diagnosis
from .egress import EGRESS_IMAGE
from .engine import Engine, flavour, rootless
from .mould import Mould

log = logging.getLogger(__name__)

# The helper needs python3 and e2fsprogs: the egress sidecar's image has both (built from the base image).
HELPER_IMAGE = EGRESS_IMAGE
MECHANISM = "loop-mounted ext4 image per bottle (kernel-enforced)"
PODMAN_MECHANISM = "loop-mounted ext4 image per bottle, attached by Podman's mount (kernel-enforced)"
DEVICE_PREFIX = "DISK-DEVICE "
CHECK_LINE = "DISK-CHECK ok"
FORMATTED_LINE = "DISK-FORMATTED ok"
READY_TIMEOUT_S = 60.0
MOUNT_OPTIONS = "nosuid,nodev,noinit_itable"
WORK_SUFFIX = "-work"
DISK_SUFFIX = "-disk"
CONTAINER_LOG = {"max-size": "1m", "max-file": "1"}  # the helper's
BOTTLE_LOG_MAX_SIZE = "1m"  # a bottle's output as the engine keeps it: at most two such files


def helper_script() -> str:
    return (resources.files("bottle_mcp") / "data" / "disk_helper.py").read_text(encoding="utf-8")


def disk_volume_of(work_volume: str) -> str:
    """The volume holding the image file behind a bottle's workspace volume."""
    return work_volume.removesuffix(WORK_SUFFIX) + DISK_SUFFIX


@dataclass(frozen=True)
class DiskSupport:
    """What this engine offers for disk limits."""

    mechanism: str | None  # None: no limit can be enforced here
    reason: str


def _helper(name: str | None, labels: dict[str, str], args: list[str], disk_volume: str | None) -> Mould:
    mounts = (docker.types.Mount(target="/disk", source=disk_volume, type="volume"),) if disk_volume else ()
    if args[:1] == ["format"]:  # no loop device to attach: no capability, no device
        return Mould(
            image=HELPER_IMAGE,
            entrypoint=["python3", "-c", helper_script()],
            command=args,
            name=name,
            user="0:0",
            labels=labels,
            network_mode="none",
            pids=64,
            memory=256 * 1024**2,
            mounts=mounts,
            log_max_size=CONTAINER_LOG["max-size"],
        )
    return Mould(
        image=HELPER_IMAGE,
        entrypoint=["python3", "-c", helper_script()],
        command=args,
        name=name,
        user="0:0",
        labels=labels,
        network_mode="none",
        pids=64,
        memory=256 * 1024**2,
        mounts=mounts,
        capabilities_added=("MKNOD",),
        devices=("/dev/loop-control:/dev/loop-control:rwm",),
        device_cgroup_rules=("b 7:* rwm",),
        log_max_size=CONTAINER_LOG["max-size"],
    )


async def _run_helper(
    engine: Engine, name: str | None, labels: dict[str, str], args: list[str], disk_volume: str | None, want: str
) -> tuple[str, str]:
    """Start the helper; return (its container id, the first line starting with `want`)."""
    mould = _helper(name, labels, args, disk_volume)
    cid = await engine.call("start the disk helper", mould.run)
    try:
        return cid, await _wait_for_line(engine, cid, want)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await engine.remove_containers([("disk helper", cid)])
        raise


async def _wait_for_line(engine: Engine, cid: str, want: str) -> str:
    """The helper's first output line starting with `want`, read as it is printed (a followed log stream)."""

    def follow(c: docker.DockerClient) -> str | None:
        seen = b""
        for chunk in c.api.logs(cid, stdout=True, stderr=False, stream=True, follow=True):
            seen += chunk
            complete = seen[: seen.rfind(b"\n") + 1].decode(errors="replace")
            line = next((x for x in complete.splitlines() if x.startswith(want)), None)
            if line is not None:
                return line
        return None  # the helper ended without it

    line: str | None = None
    with anyio.move_on_after(READY_TIMEOUT_S):
        # Abandoned on timeout: the caller removes the helper, which ends the stream and the thread.
        line = await anyio.to_thread.run_sync(
            partial(engine.call_sync, "read the disk helper's output", follow), abandon_on_cancel=True
        )
        if line is not None:
            return line
        err = await engine.call("read the disk helper's errors", lambda c: c.api.logs(cid, stdout=False, stderr=True))
        detail = err.decode(errors="replace").strip()[-400:] or "it ended without a word"
        raise LaunchError(f"the engine could not make the bottle's disk: {detail}")
    raise LaunchError(f"the disk helper did not answer within {READY_TIMEOUT_S:g} s")


async def probe(engine: Engine, instance: L.Instance) -> DiskSupport:
    """Can this engine enforce disk limits? Asks the engine (a rootless one cannot) and runs the helper's check."""
    try:
        info = await engine.call("engine info", lambda c: c.info())
    except EngineError as e:
        return DiskSupport(None, f"the engine did not answer: {e}")
    if info.get("OSType", "linux") != "linux":
        return DiskSupport(None, f"the engine runs on {info.get('OSType')!r}, not Linux")
    if (await engine.call("engine kind", rootless)).rootless:
        return DiskSupport(None, "the engine is rootless: it cannot mount a file system image")
    if await engine.call("engine kind", flavour) == "podman":
        # Podman mounts volumes through mount(8), which attaches a `loop` image by itself: no helper
        # needs the host's loop devices (which its API would not grant: it drops device cgroup rules).
        return DiskSupport(PODMAN_MECHANISM, "Podman mounts an ext4 image through a loop device itself")
    try:
        await engine.call("inspect the disk helper image", lambda c: c.images.get(HELPER_IMAGE).id)
    except EngineNotFoundError:
        return DiskSupport(None, f"the helper image {HELPER_IMAGE!r} is missing: build it with `bottle-mcp images`")
    labels = instance.labels("sidecar", **{L.BOTTLE: "disk-probe"})
    try:
        cid, _ = await _run_helper(engine, None, labels, ["check"], None, CHECK_LINE)
    except (LaunchError, EngineError) as e:
        return DiskSupport(None, f"the engine cannot hand out loop devices: {e}")
    with anyio.CancelScope(shield=True):
        await engine.remove_containers([("disk probe", cid)])
    return DiskSupport(MECHANISM, "the engine hands out loop devices and mounts ext4 volumes")


async def create_workspace(
    engine: Engine,
    *,
    name: str,
    work_volume: str,
    size: int,
    uid: str,
    gid: str,
    volume_labels: dict[str, str],
    helper_labels: dict[str, str],
) -> str:
    """Make the disk volume and the size-limited work volume; return the helper's id (remove it once the
    bottle has started: the mount then holds the device). Undoes what it made on failure."""
    disk_volume = disk_volume_of(work_volume)
    await engine.call("create the disk volume", lambda c: c.api.create_volume(name=disk_volume, labels=volume_labels))
    helper_id: str | None = None
    helper_name = f"{name}-disk-helper"
    try:
        if await engine.call("engine kind", flavour) == "podman":
            where = await engine.call("inspect the disk volume", lambda c: c.api.inspect_volume(disk_volume))
            helper_id, _ = await _run_helper(
                engine, helper_name, helper_labels, ["format", str(size), uid, gid], disk_volume, FORMATTED_LINE
            )
            opts = {"type": "ext4", "device": f"{where['Mountpoint']}/image", "o": f"loop,{MOUNT_OPTIONS}"}
        else:
            helper_id, line = await _run_helper(
                engine, helper_name, helper_labels, ["make", str(size), uid, gid], disk_volume, DEVICE_PREFIX
            )
            opts = {"type": "ext4", "device": line[len(DEVICE_PREFIX) :].strip(), "o": MOUNT_OPTIONS}
        await engine.call(
            "create the workspace volume",
            lambda c: c.api.create_volume(name=work_volume, driver="local", driver_opts=opts, labels=volume_labels),
        )
        return helper_id
    except BaseException:
        with anyio.CancelScope(shield=True):
            if helper_id is not None:
                await engine.remove_containers([("disk helper", helper_id)])
            await remove_volumes(engine, work_volume)
        raise


async def remove_volumes(engine: Engine, work_volume: str) -> list[str]:
    """Remove the work volume and the disk volume behind it (whichever exist)."""
    removed = []
    for vol in (work_volume, disk_volume_of(work_volume)):
        if await engine.remove_resource("volume", vol):
            removed.append(f"volume {vol}")
    return removed


def diagnosis(support: DiskSupport, lm: LoadedManifest | None) -> Diagnosis:
    """What doctor says about disk limits: the mechanism, or which bottles cannot launch without one."""
    if support.mechanism is not None:
        return Diagnosis("disk limit", "ok", f"the engine enforces disk limits: {support.mechanism}; {support.reason}")
    limited = [] if lm is None else [n for n, b in lm.manifest.bottles.items() if b.resources.disk_bytes]
    if not limited:
        return Diagnosis("disk limit", "warn", f"the engine cannot enforce a disk limit: {support.reason}")
    return Diagnosis(
        "disk limit",
        "fail",
        f"the engine cannot enforce a disk limit ({support.reason}), so bottle(s) {', '.join(limited)} cannot launch",
        "use an engine that runs as root on Linux with loop devices (/dev/loop-control), or set disk = "
        "'unlimited' under [bottles.NAME.resources] to run those bottles without a limit",
    )
