"""Git and ssh gates against real upstreams: sshd containers this module starts.

One upstream (sshd on ports 22 and 2222, a bare repository at /srv/repo.git) is
declared twice: as a git upstream on port 22 and as an ssh host on port 2222. A
second sshd ("stranger") accepts the same keys but is declared nowhere. One
bottle is launched for the whole module; each test checks the upstream's refs
itself, so the order of the tests does not matter.
"""

from __future__ import annotations

import secrets
import shlex
import string
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import docker
import pytest
from docker.models.containers import Container

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.images import CONTEXT_LABEL, context_hash
from bottle_mcp.errors import LaunchError
from bottle_mcp.labels import Instance
from bottle_mcp.models import ExecResult
from bottle_mcp.service import BottleService, ServiceConfig

pytestmark = pytest.mark.anyio

IMAGES = Path(__file__).parent / "images"
UPSTREAM_IMAGE = "bottle-mcp/test-upstream-sshd:latest"
SSH_WORKER_IMAGE = "bottle-mcp/test-ssh-worker:latest"
FORWARDED = "BOTTLE_MCP_TEST_FORWARDED_TOKEN"
GIT = "git -c user.name=agent -c user.email=agent@example.invalid -c init.defaultBranch=main"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def ensure_image(client: docker.DockerClient, tag: str, folder: str) -> str:
    """Build a test image from the Debian mirror, unless it is current."""
    context = IMAGES / folder
    want = context_hash(context, "Dockerfile", {})
    try:
        have = client.images.get(tag).labels.get(CONTEXT_LABEL)
    except docker.errors.ImageNotFound:
        have = None
    if have != want:
        for chunk in client.api.build(
            path=str(context),
            tag=tag,
            labels={L.MANAGED: "true", CONTEXT_LABEL: want},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            if "error" in chunk:
                pytest.fail(f"building {tag} failed: {chunk['error']}")
    return tag


@pytest.fixture(scope="module")
def upstream_image(docker_client: docker.DockerClient) -> str:
    return ensure_image(docker_client, UPSTREAM_IMAGE, "upstream-sshd")


@pytest.fixture(scope="module")
def ssh_worker_image(docker_client: docker.DockerClient, worker_image: str) -> str:
    return ensure_image(docker_client, SSH_WORKER_IMAGE, "ssh-worker")


def anthropic_key() -> str:
    """A fresh key in the shape Anthropic issues: never one a scanner could have memorised."""
    alphabet = string.ascii_letters + string.digits + "_-"
    return "sk-ant-api03-" + "".join(secrets.choice(alphabet) for _ in range(93)) + "AA"


def run_in(container: Container, argv: list[str], user: str = "") -> tuple[int, str]:
    """A short command in a test container (not a bottle), as (exit code, output)."""
    res = container.exec_run(argv, user=user)
    assert isinstance(res.output, bytes)
    return (-1 if res.exit_code is None else res.exit_code), res.output.decode(errors="replace")


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class World:
    network: str
    upstream: Container
    upstream_name: str
    upstream_key: str
    upstream_ip: str
    stranger_ip: str
    stranger_key: str
    keys: Path

    def upstream_refs(self) -> dict[str, str]:
        code, out = run_in(
            self.upstream, ["git", "-C", "/srv/repo.git", "for-each-ref", "--format=%(refname) %(objectname)"], "git"
        )
        assert code == 0, out
        return dict(tuple(line.split(" ", 1)) for line in out.splitlines())  # type: ignore[misc]

    def upstream_file(self, ref: str, path: str) -> str:
        code, out = run_in(self.upstream, ["git", "-C", "/srv/repo.git", "show", f"{ref}:{path}"], "git")
        return out if code == 0 else ""


def _start_sshd(
    client: docker.DockerClient, image: str, name: str, network: str, authorized: str, labels: dict[str, str]
) -> tuple[Container, str, str]:
    c = client.containers.run(
        image, name=name, detach=True, network=network, environment={"AUTHORIZED_KEYS": authorized}, labels=labels
    )
    for _ in range(300):
        logs = c.logs().decode(errors="replace")
        for line in logs.splitlines():
            if line.startswith("HOSTKEY ") and "Server listening" in logs:
                c.reload()
                ip = c.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
                return c, line.removeprefix("HOSTKEY ").strip(), ip
        c.reload()
        if c.status not in {"created", "running"}:
            pytest.fail(f"{name} stopped: {logs[-800:]}")
        time.sleep(0.1)  # polling the log: the engine has no event for "sshd is listening"
    pytest.fail(f"{name} did not start: {c.logs().decode(errors='replace')[-800:]}")


@pytest.fixture(scope="module")
def world(
    docker_client: docker.DockerClient, upstream_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    keys = tmp_path_factory.mktemp("keys")
    git_pub = keygen(keys / "git_key")
    ssh_pub = keygen(keys / "ssh_key")
    token = secrets.token_hex(4)
    labels = Instance.current().labels("sidecar", **{f"{L.PREFIX}.test": "gates"})
    net_name = f"bottle-mcp-test-gates-{token}"
    net = docker_client.networks.create(net_name, driver="bridge", labels=labels)
    started: list[Container] = []
    try:
        both = f"{git_pub}\n{ssh_pub}"
        upstream_name = f"bottle-mcp-test-upstream-{token}"
        up, up_key, up_ip = _start_sshd(docker_client, upstream_image, upstream_name, net_name, both, labels)
        started.append(up)
        stranger, stranger_key, stranger_ip = _start_sshd(
            docker_client, upstream_image, f"bottle-mcp-test-stranger-{token}", net_name, both, labels
        )
        started.append(stranger)
        yield World(net_name, up, upstream_name, up_key, up_ip, stranger_ip, stranger_key, keys)
    finally:
        for c in started:
            c.remove(force=True)
        net.remove()


def labelled(client: docker.DockerClient, label: str) -> list[str]:
    """Names of the containers, volumes and networks carrying a label (key=value)."""
    flt = {"label": [label]}
    names = [c["Names"][0] for c in client.api.containers(all=True, filters=flt)]
    names += [v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or []]
    return names + [n["Name"] for n in client.api.networks(filters=flt)]


def gate_manifest(world: World, *, git_pin: str | None, runtime: str = "auto", egress: bool = False) -> str:
    pin = f'known_host_key = "{git_pin}"' if git_pin else ""
    network = 'network = "egress"\n        egress.allow = ["updates.example.test"]' if egress else ""
    return f"""
        [bottles.pusher]
        image = "{SSH_WORKER_IMAGE}"
        runtime = "{runtime}"
        # The real value in the bottle (not a stand-in): the gate's scan for it is what is tested.
        real_credentials = ["{FORWARDED}"]
        {network}

        [[bottles.pusher.git]]
        name = "origin"
        upstream = "ssh://git@{world.upstream_name}:22/srv/repo.git"
        identity_file = "{world.keys / "git_key"}"
        {pin}

        [[bottles.pusher.ssh]]
        host = "box"
        hostname = "{world.upstream_name}"
        port = 2222
        user = "git"
        identity_file = "{world.keys / "ssh_key"}"
        known_host_key = "{world.upstream_key}"

        [agents.pusher]
        bottle = "pusher"
        command = ["true"]
        credentials = ["{FORWARDED}"]
        """


@dataclass
class Gated:
    service: BottleService
    bottle_id: str
    world: World
    forwarded: str

    async def sh(self, command: str, timeout_s: float = 120) -> ExecResult:
        return await self.service.exec(self.bottle_id, command, timeout_s=timeout_s)

    async def gate_refs(self) -> str:
        res = await self.sh("git ls-remote origin")
        assert res.exit_code == 0, res.stderr
        return res.stdout

    async def clone(self, folder: str) -> str:
        """A fresh work tree in the bottle holding the gate's main, ready to commit."""
        path = f"/workspace/{folder}"
        res = await self.sh(
            f"rm -rf {path} && {GIT} init -q {path} && cd {path} && git fetch -q origin && "
            "git checkout -q -b main origin/main"
        )
        assert res.exit_code == 0, res.stderr
        return path


@pytest.fixture(scope="module")
async def gated(
    world: World, ssh_worker_image: str, tmp_path_factory: pytest.TempPathFactory, runtime: str
) -> AsyncIterator[Gated]:
    """One bottle per runtime (the security suite's `runtime` fixture), shared by the module's tests."""
    home = tmp_path_factory.mktemp("gated")
    manifest = home / "manifest.toml"
    manifest.write_text(textwrap.dedent(gate_manifest(world, git_pin=world.upstream_key, runtime=runtime)))
    forwarded = "tok-" + secrets.token_urlsafe(24)
    mp = pytest.MonkeyPatch()
    mp.setenv(FORWARDED, forwarded)
    svc = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=home, host_roots=[home]),
        DockerBackend(Instance.current(), gate_network=world.network),
    )
    try:
        with anyio.fail_after(240):
            plan = await svc.prepare("pusher")
            assert plan.gates is not None
            assert plan.gates.git_remotes == {"origin": "git://127.0.0.1:9418/origin.git"}
            launched = await svc.launch(plan.plan_id)
            assert launched.runtime == runtime
        yield Gated(svc, launched.bottle_id, world, forwarded)
    finally:
        await svc.aclose()
        mp.undo()


async def test_a_clean_push_reaches_the_upstream(gated: Gated) -> None:
    repo = await gated.clone("clean")
    note = f"clean change {secrets.token_hex(4)}"
    res = await gated.sh(
        f"cd {repo} && echo {shlex.quote(note)} > notes.txt && git add notes.txt && "
        f"{GIT} commit -q -m 'add notes' && git push origin main 2>&1"
    )
    assert res.exit_code == 0, res.stdout
    assert "pushed to ssh://git@" in res.stdout
    head = (await gated.sh(f"cd {repo} && git rev-parse HEAD")).stdout.strip()
    assert gated.world.upstream_refs()["refs/heads/main"] == head
    assert gated.world.upstream_file("main", "notes.txt").strip() == note
    log = await gated.service.gate_log(gated.bottle_id)
    pushed = [e for e in log.events if e.kind == "pushed"]
    assert pushed and pushed[-1].refs == ["refs/heads/main"] and head[:12] in pushed[-1].detail
    assert log.git_remotes == {"origin": f"ssh://git@{gated.world.upstream_name}:22/srv/repo.git"}


# Each case builds commits in a fresh work tree ($KEY holds the secret) and prints the refspec to push.
SECRET_CASES = {
    "in-a-commit": 'printf "API_KEY = \\"%s\\"\\n" "$KEY" > settings.py && git add . && $GIT commit -qm settings && '
    "echo main",
    "on-a-new-branch": 'git checkout -qb feature && printf "%s\\n" "$KEY" > key.txt && git add . && '
    "$GIT commit -qm key && echo feature",
    "in-a-merge-resolution": "echo base > f.txt && git add . && $GIT commit -qm base && git checkout -qb side && "
    "echo side > f.txt && $GIT commit -qam side && git checkout -q main && echo ours > f.txt && "
    "$GIT commit -qam ours && { $GIT merge -q side >/dev/null 2>&1 || true; } && "
    'printf "token=%s\\n" "$KEY" > f.txt && '
    "git add f.txt && $GIT commit -qm merged && echo main",
    "added-then-removed": 'printf "%s\\n" "$KEY" > oops.txt && git add . && $GIT commit -qm oops && '
    "git rm -q oops.txt && $GIT commit -qm 'remove it' && echo main",
    "with-allowlists": 'printf "key = \\"%s\\"  # pragma: allowlist secret\\n" "$KEY" > conf.py && '
    'printf "%s\\n" "$KEY" > .gitleaksignore && printf \'{"results": {}, "exclude": {"files": ".*"}}\' '
    "> .secrets.baseline && git add . && $GIT commit -qm 'allowlisted' && echo main",
    "in-a-commit-message": '$GIT commit -q --allow-empty -m "debug: token $KEY" && echo main',
}


@pytest.mark.parametrize("case", list(SECRET_CASES))
async def test_a_push_carrying_a_secret_is_refused_and_nothing_changes(gated: Gated, case: str) -> None:
    repo = await gated.clone(f"secret-{case}")
    key = anthropic_key()
    before_upstream = gated.world.upstream_refs()
    before_gate = await gated.gate_refs()
    script = SECRET_CASES[case]
    res = await gated.sh(f"cd {repo} && export KEY={shlex.quote(key)} GIT={shlex.quote(GIT)} && {script}")
    assert res.exit_code == 0, res.stderr
    ref = res.stdout.strip().splitlines()[-1]
    res = await gated.sh(f"cd {repo} && git push origin {ref} 2>&1")
    assert res.exit_code != 0
    assert "refused" in res.stdout and "Anthropic API key" in res.stdout, res.stdout
    assert key not in res.stdout and key[12:40] not in res.stdout
    expected_file = {
        "in-a-commit": "settings.py",
        "on-a-new-branch": "key.txt",
        "in-a-merge-resolution": "f.txt",
        "added-then-removed": "oops.txt",
        "with-allowlists": "conf.py",
        "in-a-commit-message": "message line 1",
    }[case]
    assert expected_file in res.stdout
    assert gated.world.upstream_refs() == before_upstream
    assert await gated.gate_refs() == before_gate
    log = await gated.service.gate_log(gated.bottle_id)
    refused = [e for e in log.events if e.kind == "refused" and e.refs == [f"refs/heads/{ref}"]]
    assert refused and any(expected_file in f for f in refused[-1].findings)
    assert all(key[12:40] not in e.model_dump_json() for e in log.events)


async def test_a_forwarded_credential_is_refused_even_in_an_unknown_format(gated: Gated) -> None:
    repo = await gated.clone("forwarded")
    before = gated.world.upstream_refs()
    res = await gated.sh(
        f'cd {repo} && printf "%s\\n" "${FORWARDED}" > env.txt && git add . && {GIT} commit -qm env && '
        "git push origin main 2>&1"
    )
    assert res.exit_code != 0
    assert f"forwarded credential {FORWARDED}" in res.stdout
    assert gated.forwarded not in res.stdout
    assert gated.world.upstream_refs() == before


HOSTILE_REFS = [
    "refs/heads/-x",
    "refs/heads/--upload-pack=id",
    "refs/heads/$(id)",
    "refs/heads/x;id",
    "refs/heads/a`id`",
    "refs/notes/commits",
    "refs/heads/ok/.hidden",
]


async def test_hostile_ref_names_and_push_options_do_nothing(gated: Gated) -> None:
    repo = await gated.clone("hostile")
    res = await gated.sh(f"cd {repo} && echo fine > fine.txt && git add . && {GIT} commit -qm fine")
    assert res.exit_code == 0, res.stderr
    before_upstream = gated.world.upstream_refs()
    before_gate = await gated.gate_refs()
    for ref in HOSTILE_REFS:
        res = await gated.sh(f"cd {repo} && git push origin {shlex.quote('HEAD:' + ref)} 2>&1")
        assert res.exit_code != 0, (ref, res.stdout)
    # Push options are not offered by the gate at all.
    res = await gated.sh(f"cd {repo} && git push -o '--exec=id' -o 'x;id' origin HEAD:refs/heads/opts 2>&1")
    assert res.exit_code != 0 and "push options" in res.stdout, res.stdout
    # Deleting and rewinding upstream history is refused too.
    res = await gated.sh(f"cd {repo} && git push origin :refs/heads/main 2>&1")
    assert res.exit_code != 0, res.stdout
    assert gated.world.upstream_refs() == before_upstream
    assert await gated.gate_refs() == before_gate
    log = await gated.service.gate_log(gated.bottle_id)
    assert any(e.kind == "refused" and "ref names must be" in e.detail for e in log.events)


async def test_the_keys_never_enter_the_bottle(gated: Gated, docker_client: docker.DockerClient) -> None:
    gates = docker_client.containers.list(filters={"label": [f"{L.BOTTLE}={gated.bottle_id}", f"{L.PREFIX}.gate=gate"]})
    assert len(gates) == 1
    for name in ("git_key", "ssh_key"):
        chunk = (gated.world.keys / name).read_text().splitlines()[2][10:42]
        if name == "git_key":
            # The search works: it finds the key where it is, in the gate's tmpfs.
            _code, found = run_in(gates[0], ["grep", "-rlF", chunk, "/run/gate"])
            assert found.strip() == "/run/gate/keys/git-0", found
        res = await gated.sh(
            f"grep -rlF {shlex.quote(chunk)} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; "
            f"env | grep -cF {shlex.quote(chunk)}",
            timeout_s=300,
        )
        assert res.stdout.strip() == "0", f"{name} found in the bottle: {res.stdout}"
    res = await gated.sh(
        "grep -rlE 'BEGIN (OPENSSH|RSA|EC|DSA)? ?PRIVATE KEY' / --exclude-dir=proc --exclude-dir=sys "
        "--exclude-dir=dev --exclude-dir=usr 2>/dev/null; true",
        timeout_s=300,
    )
    assert res.stdout.strip() == ""
    # The gate got its keys on stdin: none is in its configuration or environment either.
    env = "\n".join(gates[0].attrs["Config"]["Env"] or [])
    assert "PRIVATE KEY" not in env


async def test_only_the_declared_ssh_host_is_reachable(gated: Gated) -> None:
    # The declared host works, authenticated by the gate's agent: the bottle has no key file.
    res = await gated.sh("ssh box 'echo reached $(hostname)' 2>&1; ssh-add -L 2>&1 | head -c 0; ls ~/.ssh")
    assert "reached" in res.stdout, res.stdout
    assert "_key" not in res.stdout and "id_" not in res.stdout
    probe = (
        "import socket, sys\n"
        "for host, port in [(a.rsplit(':', 1)[0], int(a.rsplit(':', 1)[1])) for a in sys.argv[1:]]:\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    try:\n"
        "        s.connect((host, port)); print('OPEN', host, port)\n"
        "    except OSError as e:\n"
        "        print('CLOSED', host, port, type(e).__name__)\n"
    )
    w = gated.world
    targets = [
        f"{w.stranger_ip}:22",
        f"{w.upstream_ip}:22",
        f"{w.upstream_ip}:2222",
        "127.0.0.1:22",
        "127.0.0.1:2201",
        "127.0.0.1:2222",
        "127.0.0.1:9419",
    ]
    res = await gated.sh(f"python3 -c {shlex.quote(probe)} {' '.join(targets)}")
    assert res.exit_code == 0, res.stderr
    assert "OPEN" not in res.stdout, res.stdout
    assert res.stdout.count("CLOSED") == len(targets)
    # The stranger's name does not resolve and the relay's port leads only to the declared host.
    res = await gated.sh(
        f"ssh -o ConnectTimeout=5 -o BatchMode=yes git@{w.stranger_ip} true 2>&1; "
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p 2200 "
        "-o IdentityAgent=$HOME/.ssh/agent-0.sock git@127.0.0.1 hostname 2>/dev/null"
    )
    assert res.stdout.strip().splitlines()[-1] == w.upstream.attrs["Config"]["Hostname"], res.stdout


async def test_a_wrong_pinned_host_key_stops_the_launch(
    world: World, ssh_worker_image: str, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> None:
    home = tmp_path_factory.mktemp("wrongpin")
    manifest = home / "manifest.toml"
    # The stranger's key, pinned for the upstream: the gate must refuse to talk to it.
    manifest.write_text(textwrap.dedent(gate_manifest(world, git_pin=world.stranger_key)))
    backend = DockerBackend(Instance.current(), gate_network=world.network)
    svc = BottleService(ServiceConfig(manifest_path=manifest, cwd=home, host_roots=[home]), backend)
    try:
        with anyio.fail_after(120):
            plan = await svc.prepare("pusher")
            with pytest.raises(LaunchError, match="host key does not match known_host_key"):
                await svc.launch(plan.plan_id)
    finally:
        await svc.aclose()
    assert labelled(docker_client, f"{L.INSTANCE}={backend.instance.id}") == []


async def test_an_unpinned_upstream_is_trusted_on_first_use_beside_an_egress_proxy(
    world: World, ssh_worker_image: str, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> None:
    home = tmp_path_factory.mktemp("tofu")
    manifest = home / "manifest.toml"
    # With egress too: the gate's forwarder and the proxy's share the bottle's network namespace.
    manifest.write_text(textwrap.dedent(gate_manifest(world, git_pin=None, egress=True)))
    svc = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=home, host_roots=[home]),
        DockerBackend(Instance.current(), gate_network=world.network),
    )
    try:
        with anyio.fail_after(120):
            plan = await svc.prepare("pusher")
            assert any("no known_host_key" in w and "'origin'" in w for w in plan.warnings)
            bid = (await svc.launch(plan.plan_id)).bottle_id
            log = await svc.gate_log(bid)
            gate_objects = labelled(docker_client, f"{L.BOTTLE}={bid}")
            assert {"gate", "gate-fwd", "gate-sock", "gate-repos"} <= {n.rsplit(bid + "-", 1)[-1] for n in gate_objects}
            # Every container of it (bottle, gate, forwarders, proxy) has a bounded log.
            containers = docker_client.api.containers(filters={"label": [f"{L.BOTTLE}={bid}"]})
            assert len(containers) >= 5
            for c in containers:
                logs = docker_client.api.inspect_container(c["Id"])["HostConfig"]["LogConfig"]
                assert logs["Config"].get("max-size") and logs["Config"].get("max-file"), (c["Names"], logs)
            res = await svc.exec(bid, "git ls-remote origin refs/heads/main && echo $HTTPS_PROXY")
            assert res.exit_code == 0, res.stderr
            assert res.stdout.split()[1:] == ["refs/heads/main", "http://127.0.0.1:3128"]
    finally:
        await svc.aclose()
    assert labelled(docker_client, f"{L.BOTTLE}={bid}") == []  # the gate went with the bottle
    listed = await anyio.run_process(["ssh-keygen", "-lf", "-"], input=f"x {world.upstream_key}".encode())
    fingerprint = listed.stdout.decode().split()[1]
    hostkey = [e for e in log.events if e.kind == "hostkey"]
    assert len(hostkey) == 1 and fingerprint in hostkey[0].detail


async def test_a_push_of_many_long_ref_names_leaves_a_clipped_bounded_gate_log(gated: Gated) -> None:
    repo = await gated.clone("many-refs")
    key = anthropic_key()
    res = await gated.sh(f"cd {repo} && printf '%s\\n' {shlex.quote(key)} > k.txt && git add . && {GIT} commit -qm k")
    assert res.exit_code == 0, res.stderr
    # 300 valid ref names of over 400 characters each, carrying a secret: refused, with all 300 named.
    long_part = "/".join(["b" * 99] * 4)
    valid = " ".join(f"HEAD:refs/heads/r{i:03d}/{long_part}" for i in range(300))
    # 300 invalid names of 250 characters: refused too, each quoted in the findings.
    invalid = " ".join(f"HEAD:refs/heads/-{i:03d}{'a' * 246}" for i in range(300))
    for names in (valid, invalid) * 3:
        res = await gated.sh(f"cd {repo} && git push origin {names} 2>&1")
        assert res.exit_code != 0, res.stdout[-500:]
    service = gated.service
    saved = service.config.output_cap
    service.config.output_cap = 16 * 1024
    try:
        log = await service.gate_log(gated.bottle_id, cursor="0", limit=1000)
        assert len(log.model_dump_json()) <= 16 * 1024
        events = []
        cursor: str | None = "0"
        while cursor is not None:  # every event once, each page within the cap
            page = await service.gate_log(gated.bottle_id, cursor=cursor, limit=1000)
            assert len(page.model_dump_json()) <= 16 * 1024
            events += page.events
            cursor = page.next_cursor
        assert len(events) == page.total
        clipped_refs = [e for e in events if e.kind == "refused" and e.lengths.get("refs") == 300]
        many_findings = [e for e in events if e.kind == "refused" and e.lengths.get("findings", 0) > 20]
        assert len(clipped_refs) == 3 and len(many_findings) >= 3, [(e.kind, e.lengths) for e in events]
        for event in events:
            assert len(event.refs) <= 20 and len(event.findings) <= 20
            assert all(len(x) <= 203 for x in [*event.refs, *event.findings, event.detail])
    finally:
        service.config.output_cap = saved


async def test_what_the_bottle_pushes_lands_within_its_disk_limit(
    gated: Gated, docker_client: docker.DockerClient
) -> None:
    flt = {"label": [f"{L.BOTTLE}={gated.bottle_id}"]}
    volumes = {v["Name"]: v for v in docker_client.api.volumes(filters=flt)["Volumes"] or []}
    (repos,) = [v for n, v in volumes.items() if n.endswith("-gate-repos")]
    assert repos["Options"]["type"] == "ext4" and repos["Options"]["device"].startswith("/dev/loop")
    assert repos["Name"] + "-disk" in volumes
