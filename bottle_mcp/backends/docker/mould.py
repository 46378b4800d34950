"""The one mould every container of the Docker backend is cast from.

The bottle, the egress proxy and its forwarder, the git gate and its forwarder,
and warm-pool spares all come out of `Mould.create`: what differs between them
(image, command, user, network, mounts, limits) is a field, while the hardening
is not a choice. Every container gets: all capabilities dropped and none added
(no sidecar needs one: they run as unprivileged users and bind no port below
1024), no-new-privileges, private IPC and cgroup namespaces, an init process,
pids and memory limits with no swap beyond them, a log the engine rotates, and
the project's labels. The root file system is read-only unless the manifest
opts a bottle out; sidecars never opt out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.types import LogConfig, Mount, Ulimit

from ...planning import HARDENING
from .engine import flavour

# What the engine keeps of a container's output: json-file (so `logs` can read it back),
# rotated, so that a bottle or sidecar writing without end cannot fill the host's disk.
LOG_MAX_SIZE = "4m"
LOG_FILES = "2"


@dataclass(frozen=True)
class Mould:
    """The create arguments of one hardened container (everything but the hardening)."""

    image: str
    command: list[str]
    name: str | None
    user: str
    labels: Mapping[str, str]
    network_mode: str
    pids: int
    memory: int
    runtime: str = "runc"
    read_only: bool = True
    mounts: tuple[Mount, ...] = ()
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    nano_cpus: int | None = None
    working_dir: str | None = None
    hostname: str | None = None
    log_max_size: str = LOG_MAX_SIZE
    entrypoint: list[str] | None = None
    # Only the disk helper (backends/docker/disk.py) has these: CAP_MKNOD and the loop devices,
    # to attach a bottle's disk image. No other container gets a capability or a device.
    capabilities_added: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    device_cgroup_rules: tuple[str, ...] = ()

    def host_config(self, c: docker.DockerClient) -> Any:
        extra: dict[str, Any] = {} if self.nano_cpus is None else {"nano_cpus": self.nano_cpus}
        if self.capabilities_added:
            extra["cap_add"] = list(self.capabilities_added)
        if self.devices:
            extra["devices"] = list(self.devices)
        if self.device_cgroup_rules:
            extra["device_cgroup_rules"] = list(self.device_cgroup_rules)
        return c.api.create_host_config(
            init=HARDENING.init,
            read_only=self.read_only,
            cap_drop=list(HARDENING.capabilities_dropped),
            security_opt=["no-new-privileges:true"] if HARDENING.no_new_privileges else [],
            ipc_mode="private",
            cgroupns="private",
            runtime=self.runtime,
            network_mode=self.network_mode,
            mounts=list(self.mounts),
            tmpfs=tmpfs_for(flavour(c), self.tmpfs),
            pids_limit=pids_cgroup_limit(self.runtime, self.pids),
            ulimits=process_rlimits(self.runtime, self.pids, self.memory),
            mem_limit=self.memory,
            memswap_limit=self.memory,
            log_config=LogConfig(type="json-file", config={"max-size": self.log_max_size, "max-file": LOG_FILES}),
            **extra,
        )

    def create(self, c: docker.DockerClient) -> str:
        """Create the container (not started); its id. Blocking: call through Engine.call."""
        if flavour(c) == "podman":
            self._create_labelled_volumes(c)
        created = c.api.create_container(
            image=self.image,
            entrypoint=self.entrypoint,
            command=self.command,
            name=self.name,
            hostname=self.hostname,
            user=self.user,
            working_dir=self.working_dir,
            environment=dict(self.environment),
            labels=dict(self.labels),
            host_config=self.host_config(c),
        )
        return str(created["Id"])

    def _create_labelled_volumes(self, c: docker.DockerClient) -> None:
        # Docker creates a missing named volume with the labels its mount carries; Podman creates
        # it without them, and an unlabelled volume could never be found by cleanup. So here the
        # volume is made first, labelled, and the mount then finds it.
        for mount in self.mounts:
            labels = (mount.get("VolumeOptions") or {}).get("Labels")
            if mount.get("Type") == "volume" and labels:
                c.api.create_volume(name=mount["Source"], labels=dict(labels))

    def run(self, c: docker.DockerClient) -> str:
        """Create and start the container; its id."""
        container_id = self.create(c)
        c.api.start(container_id)
        return container_id


# Under gVisor the pids cgroup counts the sandbox's own host threads, not the bottle's processes:
# at the limit the sandbox itself cannot grow and dies with everything in it. So there the cgroup
# only stops a runaway sandbox (measured: ~30 threads idle, ~570 during a fork bomb held at 256
# processes), and the bottle's process limit is the sandbox kernel's own RLIMIT_NPROC. Each
# process also costs the sandbox host memory outside what the bottle sees (a bomb of 512 in
# 256 MiB took the sandbox down, 256 in 512 MiB did not), so the count is held to 1 per 2 MiB.
GVISOR_THREADS_PER_PROCESS = 4
GVISOR_MIN_THREADS = 2048
GVISOR_BYTES_PER_PROCESS = 2 * 1024**2
GVISOR_MIN_PROCESSES = 64


def pids_cgroup_limit(runtime: str, pids: int) -> int:
    """The engine's pids limit for a container whose processes may number `pids`."""
    if runtime == "runsc":
        return max(GVISOR_MIN_THREADS, pids * GVISOR_THREADS_PER_PROCESS)
    return pids


def gvisor_processes(pids: int, memory: int) -> int:
    """How many processes a gVisor bottle may run: its pids, held to what its memory can carry."""
    return max(GVISOR_MIN_PROCESSES, min(pids, memory // GVISOR_BYTES_PER_PROCESS))


def process_rlimits(runtime: str, pids: int, memory: int) -> list[Ulimit]:
    """Per-process limits. Under runc, RLIMIT_NPROC would count every process of the uid on the
    host, so the pids cgroup is the limit there; gVisor's kernel counts the sandbox's alone."""
    if runtime == "runsc":
        n = gvisor_processes(pids, memory)
        return [Ulimit(name="nproc", soft=n, hard=n)]
    return []


def tmpfs_for(engine: str, tmpfs: Mapping[str, str]) -> dict[str, str]:
    """Tmpfs options as the engine takes them.

    Podman refuses `uid=`/`gid=` on a tmpfs; its `U` option gives the mount to the container's
    user instead, which is what those options say.
    """
    if engine != "podman":
        return dict(tmpfs)
    out: dict[str, str] = {}
    for target, options in tmpfs.items():
        parts = [o for o in options.split(",") if not o.startswith(("uid=", "gid="))]
        if len(parts) != len(options.split(",")):
            parts.append("U")
        out[target] = ",".join(parts)
    return out


FORWARDER_PIDS = 128  # socat forks per connection: this bounds the bottle's concurrent connections
FORWARDER_MEMORY = 128 * 1024**2


def forwarder(
    *,
    image: str,
    command: list[str],
    name: str,
    user: str,
    labels: Mapping[str, str],
    bottle_container_id: str,
    socket_volume: str,
    socket_dir: str,
) -> Mould:
    """A forwarder in the bottle's network namespace (not its files or processes) to a sidecar's sockets."""
    return Mould(
        image=image,
        command=command,
        name=name,
        user=user,
        labels=labels,
        network_mode=f"container:{bottle_container_id}",
        mounts=(Mount(target=socket_dir, source=socket_volume, type="volume"),),
        pids=FORWARDER_PIDS,
        memory=FORWARDER_MEMORY,
    )
