"""The container holds: privileges, file system, engine socket, namespaces, limits, runtime.

Each test attacks a real bottle from inside and checks the engine's view too.
"""

from __future__ import annotations

import os

import anyio
import anyio.to_thread
import docker
import pytest

from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.service import BottleService

from .conftest import launch, probe

pytestmark = pytest.mark.anyio


async def sh(
    service: BottleService, bottle: DockerBottle, command: str, timeout_s: float = 60
) -> tuple[int | None, str]:
    res = await service.exec(bottle.id, command, timeout_s=timeout_s)
    return res.exit_code, res.stdout + res.stderr


async def test_no_capabilities_and_no_new_privileges_inside_and_in_inspect(
    sec_service: BottleService, plain_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    _, out = await sh(
        sec_service, plain_bottle, "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status"
    )
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert fields[cap] == "0000000000000000", out
    assert fields.get("CapAmb", "0000000000000000") == "0000000000000000", out  # gVisor has no CapAmb line
    assert (await probe(plain_bottle, "no_new_privs")).strip() == "no_new_privs 1"
    hc = docker_client.api.inspect_container(plain_bottle.container_id)["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert "no-new-privileges:true" in hc["SecurityOpt"]
    assert not any(o.startswith("seccomp=unconfined") for o in hc["SecurityOpt"])
    assert hc["Privileged"] is False
    # A setuid-root binary does not raise privileges: mount (setuid root in the image) still runs as uid 1000.
    code, out = await sh(sec_service, plain_bottle, "test -u /usr/bin/mount && mount -t tmpfs none /mnt")
    assert code != 0 and "must be superuser" in out, out


async def test_root_filesystem_is_read_only(
    sec_service: BottleService, plain_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    # /var/tmp is world-writable in the image: only the read-only mount stops the write.
    code, out = await sh(sec_service, plain_bottle, "test -w /var/tmp -o -k /var/tmp && echo x > /var/tmp/evil")
    assert code != 0 and "Read-only file system" in out, out
    for path in ("/usr/bin/evil", "/etc/evil", "/evil"):
        code, out = await sh(sec_service, plain_bottle, f"echo x > {path}")
        assert code != 0, (path, out)
    assert docker_client.api.inspect_container(plain_bottle.container_id)["HostConfig"]["ReadonlyRootfs"] is True
    code, _ = await sh(sec_service, plain_bottle, "echo ok > /tmp/ok && echo ok > /workspace/ok && echo ok > ~/ok")
    assert code == 0


async def test_no_engine_socket_anywhere(
    sec_service: BottleService, plain_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    _, out = await sh(
        sec_service,
        plain_bottle,
        "find / -xdev -type s 2>/dev/null; find /run /var/run /tmp -type s 2>/dev/null; "
        "ls -la /var/run/docker.sock /run/containerd 2>&1; "
        "grep -c -E 'docker.sock|containerd.sock' /proc/self/mountinfo",
    )
    assert "docker.sock" not in out.replace("cannot access '/var/run/docker.sock'", ""), out
    assert out.strip().splitlines()[-1] == "0", out
    mounts = docker_client.api.inspect_container(plain_bottle.container_id)["Mounts"]
    assert [m["Type"] for m in mounts] == ["volume"], mounts


async def test_no_host_namespaces_or_sensitive_mounts(
    sec_service: BottleService, plain_bottle: DockerBottle, docker_client: docker.DockerClient
) -> None:
    hc = docker_client.api.inspect_container(plain_bottle.container_id)["HostConfig"]
    assert hc["NetworkMode"] == "none"
    for key in ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        assert hc.get(key) in ("", None, "private"), (key, hc.get(key))
    assert not hc["Binds"] and not hc["Devices"] and not hc["VolumesFrom"]
    _, out = await sh(sec_service, plain_bottle, "ps -e -o comm= | sort -u; hostname")
    procs = out.split()
    assert "dockerd" not in procs and "containerd" not in procs and "systemd" not in procs, out
    assert os.uname().nodename not in procs
    _, out = await sh(sec_service, plain_bottle, "cat /proc/self/mountinfo")
    for sensitive in (" /var/run ", " /etc/docker", " /root ", " /home ", "/proc/sysrq-trigger rw", " /boot "):
        assert sensitive not in out, sensitive


async def test_the_runtime_the_plan_names_is_the_runtime_that_runs(
    sec_service: BottleService, docker_client: docker.DockerClient, runtime: str
) -> None:
    plan = await sec_service.prepare("plain")
    assert plan.runtime.effective == runtime
    bottle = await launch(sec_service, "plain")
    try:
        assert docker_client.api.inspect_container(bottle.container_id)["HostConfig"]["Runtime"] == runtime
        res = await sec_service.exec(bottle.id, "uname -r; dmesg 2>&1 | head -3")
        if runtime == "runsc":
            assert "gVisor" in res.stdout, res.stdout  # gVisor's own kernel log
        else:
            assert res.stdout.splitlines()[0] == os.uname().release
    finally:
        await sec_service.stop(bottle.id)


async def test_fork_bomb_is_bounded_by_the_pids_limit_while_the_host_answers(
    sec_service: BottleService, docker_client: docker.DockerClient, runtime: str
) -> None:
    bomb = await launch(sec_service, "plain")
    try:
        out = await probe(bomb, "fork_until_refused", "5000", timeout_s=60)
        words = out.split()
        # runc: the pids cgroup refuses; gVisor: the sandbox kernel's RLIMIT_NPROC does, and the
        # sandbox itself (whose host threads the cgroup counts) keeps room to breathe.
        assert words[0] == "forked" and words[2] == "refused", out
        assert int(words[1]) < 512 and words[3] == "BlockingIOError", out
        assert docker_client.ping()
        assert (await anyio.run_process(["true"])).returncode == 0
        # The bottle itself recovers once the children are gone, under both runtimes.
        res = await bomb.exec("echo alive", timeout_s=30, workdir=None, output_cap=1024)
        assert res.stdout == "alive\n"
        assert docker_client.api.inspect_container(bomb.container_id)["State"]["Running"]
    finally:
        await sec_service.stop(bomb.id)


async def test_memory_over_the_limit_kills_only_inside_the_bottle(
    sec_service: BottleService, plain_bottle: DockerBottle, docker_client: docker.DockerClient, runtime: str
) -> None:
    hog = await launch(sec_service, "hog")
    try:
        out = await probe(hog, "allocate", "400", timeout_s=120)
        assert "allocated 400" not in out, out
        # Only the allocating process dies, under runc and gVisor alike: the bottle stays usable.
        assert docker_client.api.inspect_container(hog.container_id)["State"]["Running"]
        for _ in range(3):
            res = await hog.exec("echo still here", timeout_s=30, workdir=None, output_cap=1024)
            assert res.stdout == "still here\n"
        # Other bottles, the engine and the host are untouched.
        assert docker_client.ping()
        res = await plain_bottle.exec("echo alive", timeout_s=30, workdir=None, output_cap=1024)
        assert res.stdout == "alive\n"
    finally:
        await sec_service.stop(hog.id)


@pytest.mark.parametrize(
    "bomb",
    [
        # stopped by the exec's own timeout: the server kills the command's whole session
        pytest.param("b(){ b|b& }; b", id="exec-timeout"),
        # stopped from inside: `timeout` kills only its child, the bomb's processes live on
        pytest.param("timeout -s KILL 8 sh -c 'b(){ b|b& }; b'", id="left-running"),
    ],
)
async def test_a_real_fork_bomb_dies_and_the_bottle_stays_usable(
    sec_service: BottleService,
    docker_client: docker.DockerClient,
    runtime: str,
    bomb: str,
    request: pytest.FixtureRequest,
) -> None:
    # Known gap: the sandbox survives the bomb, but its processes are not always all ended before the
    # next commands need to fork (under gVisor most often; under runc at times): docs/security.md.
    del runtime
    request.applymarker(pytest.mark.xfail(reason="the bomb can outlive the supervisor's clean-up"))
    bottle = await launch(sec_service, "plain")
    try:
        await sec_service.exec(bottle.id, bomb, timeout_s=8)
        for i in range(3):
            res = await sec_service.exec(bottle.id, f"echo after-{i}; ls / | wc -l", timeout_s=30)
            assert res.stdout.startswith(f"after-{i}\n") and res.exit_code == 0, (res.stdout, res.stderr)
        assert docker_client.api.inspect_container(bottle.container_id)["State"]["Running"]
        assert docker_client.ping()
    finally:
        await sec_service.stop(bottle.id)
