"""The core lifecycle against the real engine: plan, launch, exec, copy, list, stop, cleanup."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.mould import pids_cgroup_limit
from bottle_mcp.errors import (
    BottleGoneError,
    BottleNotFoundError,
    ImageMissingError,
    PathError,
    StalePlanError,
    UnknownPlanError,
)
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

PODMAN_DEFAULT_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID"}
PODMAN_DEFAULT_CAPS |= {"SETPCAP", "SETUID", "SYS_CHROOT"}

pytestmark = pytest.mark.anyio


async def test_plan_names_hardening_image_and_runtime(service: BottleService) -> None:
    plan = await service.prepare("worker")
    assert plan.image_present
    assert plan.runtime.effective in {"runc", "runsc"}
    assert plan.capabilities_dropped == ["ALL"]
    assert plan.no_new_privileges and plan.read_only_root and plan.init
    assert plan.network.effective == "none"
    assert plan.host_mounts == []
    assert [s.name for s in plan.skills] == ["review"]
    assert plan.user == "1000:1000"


async def test_bottle_is_hardened_as_the_plan_says(service: BottleService, docker_client: docker.DockerClient) -> None:
    plan = await service.prepare("worker")
    launched = await service.launch(plan.plan_id)
    bottle = service.live_bottles[0]
    attrs = docker_client.api.inspect_container(bottle.container_id)  # type: ignore[attr-defined]
    hc = attrs["HostConfig"]
    # Podman's inspect spells "drop ALL" as the list of the capabilities it would otherwise grant.
    assert hc["CapDrop"] == ["ALL"] or (set(hc["CapDrop"]) >= PODMAN_DEFAULT_CAPS and not hc.get("CapAdd"))
    assert {"no-new-privileges:true", "no-new-privileges"} & set(hc["SecurityOpt"])  # Podman drops ":true"
    assert hc["ReadonlyRootfs"] is True
    assert hc["NetworkMode"] == "none"
    if launched.runtime == "runsc":
        # gVisor: the cgroup bounds the sandbox's threads; the bottle's processes are counted inside.
        assert hc["PidsLimit"] == pids_cgroup_limit("runsc", 128)
        assert {"Name": "nproc", "Soft": 128, "Hard": 128} in hc["Ulimits"]
    else:
        assert hc["PidsLimit"] == 128
    assert hc["Memory"] == 256 * 1024**2
    assert hc["Privileged"] is False
    # No host path is mounted (Podman lists the named workspace volume among its binds).
    assert all(not b.startswith("/") for b in hc["Binds"] or [])
    assert hc["Runtime"] in (launched.runtime, "oci")  # Podman names every runtime "oci" here
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["Labels"][L.INSTANCE] == service.instance.id

    # prctl(PR_GET_NO_NEW_PRIVS) works under runc and gVisor alike (gVisor's /proc omits the field).
    nnp = "import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))"
    res = await service.exec(launched.bottle_id, f"grep '^CapEff' /proc/self/status; python3 -c '{nnp}'; id -u")
    assert res.stdout == "CapEff:\t0000000000000000\n1\n1000\n", res.stderr
    res = await service.exec(launched.bottle_id, "awk '$2 == \"/\" {print $4}' /proc/mounts | cut -d, -f1")
    assert res.stdout == "ro\n"
    res = await service.exec(launched.bottle_id, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
    assert res.stdout.split() == ["lo"]
    res = await service.exec(launched.bottle_id, "cat ~/.bottle-mcp/prompt.md; ls ~/.claude/skills/review")
    assert res.stdout == "Be brief.SKILL.md\n"


async def test_exec_returns_exit_code_streams_and_timing(service: BottleService) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    res = await service.exec(bid, "echo out; echo err >&2; exit 3")
    assert (res.exit_code, res.stdout, res.stderr, res.truncated, res.timed_out) == (3, "out\n", "err\n", False, False)
    res = await service.exec(bid, "pwd", workdir="/tmp")
    assert res.stdout == "/tmp\n"


async def test_exec_timeout_kills_the_whole_process_group(service: BottleService) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    res = await service.exec(bid, "sleep 300 & sleep 301; echo never", timeout_s=1)
    assert res.timed_out and res.exit_code is None and "never" not in res.stdout
    left = await service.exec(bid, "ps -eo args | grep -c '^sleep 30[01]' || true")
    assert left.stdout.strip() == "0"


async def test_cancelled_exec_leaves_no_process(service: BottleService) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    with anyio.move_on_after(1.0):
        await service.exec(bid, "sleep 333", timeout_s=60)
    left = await service.exec(bid, "ps -eo args | grep -c '^sleep 333' || true")
    assert left.stdout.strip() == "0"


async def test_output_is_capped_and_binary_safe(service: BottleService, tmp_path: Path) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    res = await service.exec(bid, "head -c 5000000 /dev/zero | tr '\\0' 'a'; printf 'x\\033[31m\\000\\377' >&2")
    assert res.truncated and res.stdout_bytes == 5_000_000
    # The head and the tail around a marker that names the file holding all of it (in the bottle).
    head, _, rest = res.stdout.partition("\n[... stdout cut here: 5,000,000 bytes in all;")
    marker, _, tail = rest.partition("...]\n")
    assert head == "a" * len(head) and tail == "a" * len(tail) and str(res.stdout_path) in marker
    assert min(len(head), len(tail)) >= service.output_cap // 2 - 200
    assert res.stderr == "x\\x1b[31m\\x00\ufffd"
    assert any("cut in the middle" in n for n in res.notes)


async def test_cp_in_copies_files_and_refuses_escapes(service: BottleService, tmp_path: Path) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(1024 * 1024))
    (src / "link").symlink_to("a.txt")
    res = await service.cp_in(bid, str(src), "/workspace/in")
    assert (res.files, res.directories, res.symlinks) == (2, 2, 1)
    out = await service.exec(bid, "cat /workspace/in/a.txt /workspace/in/link; stat -c %s /workspace/in/sub/b.bin")
    assert out.stdout == "alphaalpha1048576\n"
    # into tmpfs, which the engine's archive API would not see
    await service.cp_in(bid, str(src / "a.txt"), "/tmp/a.txt")
    assert (await service.exec(bid, "cat /tmp/a.txt")).stdout == "alpha"

    outside = tmp_path.parent / (tmp_path.name + "-evil")
    outside.mkdir()
    (outside / "secret").write_text("s")
    (src / "escape").symlink_to(outside / "secret")
    for bad in ["/etc/passwd", "../" + outside.name + "/secret", str(outside / "secret"), str(src / "escape")]:
        with pytest.raises(PathError):
            await service.cp_in(bid, bad, "/workspace/x")
    with pytest.raises(PathError, match="symlink"):
        await service.cp_in(bid, str(src), "/workspace/again")
    with pytest.raises(PathError):
        await service.cp_in(bid, str(src / "a.txt"), "/workspace/../etc/x")


async def test_unknown_plan_and_bottle_ids_say_what_to_do(service: BottleService) -> None:
    with pytest.raises(UnknownPlanError, match="prepare_bottle"):
        await service.launch("p-nope")
    with pytest.raises(BottleNotFoundError, match="list_active"):
        await service.exec("b-nope", "true")


async def test_launch_refuses_a_plan_whose_manifest_changed(service: BottleService, example_manifest: Path) -> None:
    plan = await service.prepare("worker")
    example_manifest.write_text(example_manifest.read_text().replace('memory = "256m"', 'memory = "300m"'))
    with pytest.raises(StalePlanError, match="prepare_bottle again"):
        await service.launch(plan.plan_id)


async def test_missing_image_fails_launch_with_the_build_command(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    path = write_manifest(
        """
        [bottles.b]
        image = "bottle-mcp/does-not-exist:1"
        [agents.a]
        bottle = "b"
        command = ["true"]
        """
    )
    svc = BottleService(ServiceConfig(manifest_path=path, cwd=tmp_path), DockerBackend(Instance.current()))
    try:
        plan = await svc.prepare("a")
        assert not plan.image_present and any("bottle-mcp images" in w for w in plan.warnings)
        with pytest.raises(ImageMissingError, match="bottle-mcp images"):
            await svc.launch(plan.plan_id)
    finally:
        await svc.aclose()


async def test_bottle_removed_behind_our_back_is_reported_gone(
    service: BottleService, docker_client: docker.DockerClient
) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    bottle = service.live_bottles[0]
    docker_client.api.remove_container(bottle.container_id, force=True)  # type: ignore[attr-defined]
    with pytest.raises(BottleGoneError, match="gone"):
        await service.exec(bid, "true", timeout_s=10)
    with pytest.raises(BottleNotFoundError):
        await service.exec(bid, "true")


async def test_stop_removes_container_and_volume(service: BottleService, docker_client: docker.DockerClient) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    flt = {"label": [f"{L.BOTTLE}={bid}"]}
    assert len(docker_client.api.containers(all=True, filters=flt)) == 1
    # The workspace, and the volume holding the file system image that limits its size.
    names = sorted(v["Name"] for v in docker_client.api.volumes(filters=flt)["Volumes"] or [])
    assert [n.rsplit("-", 1)[1] for n in names] == ["disk", "work"], names
    await service.stop(bid)
    assert docker_client.api.containers(all=True, filters=flt) == []
    assert not (docker_client.api.volumes(filters=flt)["Volumes"] or [])


async def test_list_active_sees_other_servers_and_cleanup_spares_live_ones(
    service: BottleService, example_manifest: Path, tmp_path: Path
) -> None:
    other = BottleService(
        ServiceConfig(manifest_path=example_manifest, cwd=tmp_path), DockerBackend(Instance.current())
    )
    try:
        mine = (await service.launch((await service.prepare("worker")).plan_id)).bottle_id
        theirs = (await other.launch((await other.prepare("worker")).plan_id)).bottle_id
        seen = {b.bottle_id: b.owner for b in await service.list_active()}
        assert seen[mine] == "this-server"
        assert seen[theirs] == "other-server"  # same process here, but a different instance id
        with pytest.raises(BottleNotFoundError, match="another server instance"):
            await service.exec(theirs, "true")
        report = await service.cleanup()
        assert not any(i.bottle_id in {mine, theirs} for i in report.removed)
    finally:
        await other.aclose()


async def test_cleanup_removes_what_a_dead_server_left(
    service: BottleService, docker_client: docker.DockerClient
) -> None:
    plan = await service.prepare("worker")
    bid = (await service.launch(plan.plan_id)).bottle_id
    # Pretend the owner died: relabel is impossible, so forget the bottle and fake a dead owner
    # by creating a labelled container and volume the way a crashed server would have.
    dead = Instance(
        id="deadbeef0000", host=service.instance.host, boot_id=service.instance.boot_id, pid=4_194_000, start_ticks="1"
    )
    labels = dead.labels("bottle", **{L.BOTTLE: "b-dead0001"})
    docker_client.api.create_volume(name="bottle-mcp-test-dead-work", labels=dead.labels("workspace"))
    c = docker_client.api.create_container(
        "bottle-mcp/worker:latest",
        ["sleep", "infinity"],
        labels=labels,
        host_config=docker_client.api.create_host_config(network_mode="none"),
    )
    dry = await service.cleanup(dry_run=True)
    assert {i.id for i in dry.removed} >= {c["Id"], "bottle-mcp-test-dead-work"}
    assert bid not in {i.bottle_id for i in dry.removed}
    assert docker_client.api.containers(all=True, filters={"id": c["Id"]})  # dry run touched nothing
    report = await service.cleanup()
    assert {i.id for i in report.removed} >= {c["Id"], "bottle-mcp-test-dead-work"}
    assert not report.failed
    assert docker_client.api.containers(all=True, filters={"id": c["Id"]}) == []
    assert bid in {b.bottle_id for b in await service.list_active()}


async def test_launch_failing_half_way_removes_what_it_created(
    write_manifest: ManifestFactory, tmp_path: Path, worker_image: str, docker_client: docker.DockerClient
) -> None:
    # A fifo inside a skill passes prepare but makes provisioning fail, after the
    # volume and the container were created and started.
    skills = tmp_path / "skills"
    (skills / "odd").mkdir(parents=True)
    os.mkfifo(skills / "odd" / "pipe")
    path = write_manifest(
        f"""
        [host]
        keep_for = "0"  # removed when the server goes, not kept
        skills_dir = "{skills}"
        [bottles.b]
        image = "{worker_image}"
        [agents.a]
        bottle = "b"
        command = ["true"]
        skills = ["odd"]
        """
    )
    svc = BottleService(ServiceConfig(manifest_path=path, cwd=tmp_path), DockerBackend(Instance.current()))
    try:
        plan = await svc.prepare("a")
        with pytest.raises(PathError, match="fifo"):
            await svc.launch(plan.plan_id)
        flt = {"label": [f"{L.PLAN}={plan.plan_id}"]}
        assert docker_client.api.containers(all=True, filters=flt) == []
        assert not (docker_client.api.volumes(filters=flt)["Volumes"] or [])
        assert svc.live_bottles == []
    finally:
        await svc.aclose()


@pytest.fixture
def host_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "hello.txt").write_text("hello\n")
    subprocess.run([*git, "add", "hello.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    return repo


async def test_copy_cwd_brings_the_repository_checked_out(example_manifest: Path, host_repo: Path) -> None:
    repo = host_repo
    svc = BottleService(
        ServiceConfig(manifest_path=example_manifest, cwd=repo, host_roots=[repo]), DockerBackend(Instance.current())
    )
    try:
        plan = await svc.prepare("worker", copy_cwd=True)
        assert plan.copy_cwd is not None
        assert plan.copy_cwd.host_repo == str(repo.resolve())
        launched = await svc.launch(plan.plan_id)
        assert any("repository" in p for p in launched.provisioned)
        res = await svc.exec(launched.bottle_id, "git log --format=%s && cat hello.txt && git status --porcelain")
        assert res.stdout == "first\nhello\n", res.stderr
    finally:
        await svc.aclose()
