"""Every route a secret can take through the git gate, and what the ssh gate's agent will sign.

The world is test_gates.py's (an sshd upstream with a bare repository, a stranger
sshd that accepts the same keys but is declared nowhere, one bottle per runtime),
started once for this module. Each case builds git objects inside the bottle with
git's own plumbing, as an agent would, pushes them through the gate and then looks
at the upstream itself: its refs must not move and none of its objects may hold
any piece of the secret.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import string
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle_mcp import labels as L
from bottle_mcp.manifest import parse_size

from . import test_gates as base
from .test_gates import GIT, Gated, anthropic_key, run_in

# The world of test_gates.py, started once more for this module.
world = base.world
upstream_image = base.upstream_image
ssh_worker_image = base.ssh_worker_image
gated = base.gated

pytestmark = pytest.mark.anyio

FORMATS = ["private key", "GitHub", "AWS", "Slack", "Anthropic"]
ALNUM = string.ascii_letters + string.digits


def private_key(tmp: Path) -> str:
    path = tmp / f"k{secrets.token_hex(4)}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    text = path.read_text()
    path.unlink()
    path.with_suffix(".pub").unlink()
    return text


def one_line(secret: str) -> str:
    """The secret as it fits in a name or a header: one line, no '/'."""
    return " ".join(secret.split()).replace("/", "_")


def fragment(secret: str) -> str:
    """A piece of the secret's random part (no '/', no line break), to look for upstream."""
    body = "".join(secret.splitlines()[1:-1]) if "PRIVATE KEY" in secret else secret
    width = min(16, len(body) - 4)
    for start in range(max(4, len(body) // 3 - width), len(body) - width + 1):
        piece = body[start : start + width]
        if "/" not in piece and "+" not in piece:
            return piece
    raise AssertionError(f"no fragment in a secret of {len(body)} characters")


# Where a secret can ride in a push: a shell script run in a work tree that holds the gate's main
# ($S: the secret, $L: its one-line form, $N: a nonce, $GIT: git with an identity) and prints the
# refspec to push; and a word the refusal must use to say where it was found.
POSITIONS: dict[str, tuple[str, str]] = {
    "blob in a commit": ('printf "%s\\n" "$S" > f-$N.txt && git add . && $GIT commit -qm f && echo main', "blob"),
    "blob on a lightweight tag": (
        'b=$(printf "%s\\n" "$S" | git hash-object -w --stdin) && echo "$b:refs/tags/blob-$N"',
        "blob",
    ),
    "tree on a lightweight tag": (
        'b=$(printf "%s\\n" "$S" | git hash-object -w --stdin) && '
        't=$(printf "100644 blob %s\\tk.txt\\n" $b | git mktree) && echo "$t:refs/tags/tree-$N"',
        "blob",
    ),
    "file name in a commit": (
        'b=$(echo x | git hash-object -w --stdin) && git update-index --add --cacheinfo "100644,$b,$L" && '
        "$GIT commit -qm name && echo main",
        "name",
    ),
    "directory name in a tree on a tag": (
        'b=$(echo x | git hash-object -w --stdin) && s=$(printf "100644 blob %s\\tf\\n" $b | git mktree) && '
        't=$(printf "040000 tree %s\\t%s\\n" $s "$L" | git mktree) && echo "$t:refs/tags/dir-$N"',
        "name",
    ),
    "author name": ('GIT_AUTHOR_NAME="$L" $GIT commit -q --allow-empty -m a && echo main', "author"),
    "committer name": ('GIT_COMMITTER_NAME="$L" $GIT commit -q --allow-empty -m c && echo main', "committer"),
    "extra commit header": (
        'c=$(printf "tree %s\\nparent %s\\nauthor a <a@example.invalid> 1700000000 +0000\\n'
        'committer a <a@example.invalid> 1700000000 +0000\\nx-note %s\\n\\nnote\\n" '
        '$(git rev-parse "HEAD^{tree}") $(git rev-parse HEAD) "$L" | git hash-object -t commit -w --stdin) && '
        'echo "$c:refs/heads/main"',
        "x-note",
    ),
    "commit message": ('$GIT commit -q --allow-empty -m "note: $S" && echo main', "message"),
    "tagger name": ('GIT_COMMITTER_NAME="$L" $GIT tag -a -m ok tagger-$N && echo refs/tags/tagger-$N', "tagger"),
    "tag message": ('$GIT tag -a -m "see: $S" msg-$N && echo refs/tags/msg-$N', "message"),
    "annotated tag of a blob": (
        'b=$(printf "%s\\n" "$S" | git hash-object -w --stdin) && $GIT tag -a -m ok atb-$N $b && echo refs/tags/atb-$N',
        "blob",
    ),
    "branch name": ('echo "HEAD:refs/heads/$L"', "ref"),
    "tag name": ('echo "HEAD:refs/tags/$L"', "ref"),
}
# A ref name cannot hold a private key: it has neither the spaces nor the dashes of its header.
ONE_LINE_ONLY = {"branch name", "tag name"}


async def push_case(gated: Gated, position: str, secret: str, folder: str = "routes") -> tuple[int, str]:
    """Build the position's objects in the bottle and push them: (exit status of the push, its output)."""
    script, _where = POSITIONS[position]
    repo = f"/workspace/{folder}"
    setup = await gated.sh(
        f"if [ ! -d {repo} ]; then {GIT} init -q {repo}; fi && cd {repo} && git fetch -q origin && "
        "rm -f .git/index && git checkout -q -f -B main origin/main && git clean -qfdx"
    )
    assert setup.exit_code == 0, setup.stderr
    env = (
        f"export S={shlex.quote(secret)} L={shlex.quote(one_line(secret))} N={secrets.token_hex(4)} "
        f"GIT={shlex.quote(GIT)}"
    )
    res = await gated.sh(
        f'cd {repo} && {env} && spec=$({script}) && echo "SPEC=$spec" && git push origin "$spec" 2>&1; '
        'echo "PUSH-EXIT=$?"'
    )
    assert "SPEC=" in res.stdout, (position, res.stdout, res.stderr)
    code = int(res.stdout.rsplit("PUSH-EXIT=", 1)[1].strip())
    return code, res.stdout.split("SPEC=", 1)[1]


def upstream_holds(gated: Gated, piece: str) -> bool:
    """Whether any object of the upstream's repository holds this text (or its one-line form)."""
    pieces = {piece, piece.replace("/", "_")}
    pattern = " ".join(f"-e {shlex.quote(p)}" for p in pieces)
    _code, out = run_in(
        gated.world.upstream,
        [
            "sh",
            "-c",
            f"git -C /srv/repo.git cat-file --batch-all-objects --batch --unordered | grep -aFc {pattern} || true",
        ],
        "git",
    )
    return out.strip() != "0"


async def assert_refused(gated: Gated, position: str, secret: str) -> str:
    before = gated.world.upstream_refs()
    code, out = await push_case(gated, position, secret)
    piece = fragment(secret)
    assert code != 0, f"{position}: the push went through:\n{out}"
    assert "refused" in out, out
    # What the gate says (git prints it as `remote:` lines; the rest is the client echoing the agent's own input).
    said = "\n".join(line for line in out.splitlines() if line.startswith("remote:"))
    assert piece not in said and piece.replace("/", "_") not in said, said
    assert POSITIONS[position][1] in out, f"{position}: the refusal does not say where:\n{out}"
    assert gated.world.upstream_refs() == before, out
    log = await gated.service.gate_log(gated.bottle_id)
    for _ in range(3):  # seen once under heavy load: an empty read of the gate's log; read it again
        if log.events:
            break
        log = await gated.service.gate_log(gated.bottle_id)
    assert not upstream_holds(gated, piece), f"{position}: the secret reached the upstream:\n{out}\n{log.events[-3:]}"
    assert log.events[-1].kind == "refused", log.events[-1]
    dumped = log.events[-1].model_dump_json()
    assert piece not in dumped and one_line(piece) not in dumped, dumped
    return out


def make_secret(fmt: str, tmp: Path) -> str:
    if fmt == "private key":
        return private_key(tmp)
    if fmt == "GitHub":
        return "ghp_" + "".join(secrets.choice(ALNUM) for _ in range(36))
    if fmt == "AWS":
        return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
    if fmt == "Slack":
        digits = "".join(secrets.choice(string.digits) for _ in range(23))
        tail = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(24))
        return f"xoxb-{digits[:11]}-{digits[11:]}-{tail}"
    return anthropic_key()


# -- the five routes of the review, one by one ------------------------------------------------------------------

ROUTES = [
    ("blob on a lightweight tag", "private key"),
    ("tree on a lightweight tag", "private key"),
    ("file name in a commit", "private key"),
    ("author name", "private key"),
    ("branch name", "GitHub"),
]


@pytest.mark.parametrize(("position", "fmt"), ROUTES)
async def test_each_route_of_the_review_is_refused(gated: Gated, tmp_path: Path, position: str, fmt: str) -> None:
    await assert_refused(gated, position, make_secret(fmt, tmp_path))


async def test_the_file_content_control_is_still_refused(gated: Gated, tmp_path: Path) -> None:
    await assert_refused(gated, "blob in a commit", make_secret("private key", tmp_path))


@pytest.mark.parametrize("position", list(POSITIONS))
async def test_a_clean_push_of_every_kind_passes(gated: Gated, position: str) -> None:
    harmless = f"harmless-note-{secrets.token_hex(3)}"
    code, out = await push_case(gated, position, harmless, folder="clean-kinds")
    assert code == 0, f"{position}: a clean push was refused:\n{out}"
    assert "pushed to ssh://" in out
    if position in ONE_LINE_ONLY:
        assert any(ref.endswith(f"/{harmless}") for ref in gated.world.upstream_refs())
    else:
        assert upstream_holds(gated, harmless)


# -- the property: any known format, in any place -----------------------------------------------------------------


@st.composite
def secret_in_place(draw: st.DrawFn) -> tuple[str, str, str]:
    position = draw(st.sampled_from(sorted(POSITIONS)))
    formats = [f for f in FORMATS if not (position in ONE_LINE_ONLY and f == "private key")]
    fmt = draw(st.sampled_from(formats))
    return position, fmt, draw(st.sampled_from(["", "prefix ", "key="]))


@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=secret_in_place())
async def test_a_known_format_secret_in_any_place_is_refused(
    gated: Gated, tmp_path: Path, case: tuple[str, str, str]
) -> None:
    position, fmt, lead = case
    secret = make_secret(fmt, tmp_path)
    if position not in ONE_LINE_ONLY and fmt != "private key":
        secret = lead + secret
    await assert_refused(gated, position, secret)


# -- the ssh gate's agent -------------------------------------------------------------------------------------------


def bottle_container(client: docker.DockerClient, bottle_id: str) -> str:
    found = client.api.containers(filters={"label": [f"{L.BOTTLE}={bottle_id}", f"{L.ROLE}=bottle"]})
    assert len(found) == 1
    return str(found[0]["Id"])


async def test_the_agent_signs_nothing_but_a_login(gated: Gated, tmp_path: Path) -> None:
    # A generic signature (SSHSIG over data the bottle chose) through the gate's agent.
    res = await gated.sh(
        "export SSH_AUTH_SOCK=$HOME/.ssh/agent-0.sock; cd /tmp && ssh-add -L > agent.pub && "
        "echo 'chosen data' > data && ssh-keygen -Y sign -f agent.pub -n file data 2>&1; echo SIGN-EXIT=$?; "
        "cat data.sig 2>/dev/null; cat agent.pub"
    )
    assert "SIGN-EXIT=" in res.stdout, res.stderr
    pub = gated.world.keys.joinpath("ssh_key.pub").read_text().split()[1]
    assert pub in res.stdout, "the agent should still list its key"
    signed = res.stdout.split("SIGN-EXIT=", 1)[1]
    if "BEGIN SSH SIGNATURE" in signed:
        sig = (
            "-----BEGIN SSH SIGNATURE-----"
            + signed.split("-----BEGIN SSH SIGNATURE-----", 1)[1].split("-----END SSH SIGNATURE-----")[0]
            + "-----END SSH SIGNATURE-----\n"
        )
        (tmp_path / "data.sig").write_text(sig)
        (tmp_path / "signers").write_text(f"x ssh-ed25519 {pub}\n")
        verify = subprocess.run(  # noqa: ASYNC221  (a short local check, after the fact)
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(tmp_path / "signers"),
                "-I",
                "x",
                "-n",
                "file",
                "-s",
                str(tmp_path / "data.sig"),
            ],
            input=b"chosen data\n",
            capture_output=True,
            check=False,
        )
        pytest.fail(f"the agent signed chosen data (verify says: {verify.stdout.decode().strip()})")
    assert not signed.startswith("0"), signed
    # A login to the declared host still works.
    res = await gated.sh("ssh box 'echo reached'")
    assert res.stdout.strip() == "reached", res.stderr


class AgentRelay:
    """An outsider's view: a Unix socket here that reaches the bottle's agent socket through `docker exec`."""

    PUMP = (
        "import os, socket, sys, threading\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(os.path.expanduser('~/.ssh/agent-0.sock'))\n"
        "def up():\n"
        "    while (d := os.read(0, 65536)): s.sendall(d)\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "threading.Thread(target=up, daemon=True).start()\n"
        "while (d := s.recv(65536)): os.write(1, d)\n"
    )

    def __init__(self, container: str, path: Path) -> None:
        self.container = container
        self.path = path
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            proc = subprocess.Popen(
                ["docker", "exec", "-i", self.container, "python3", "-c", self.PUMP],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            threading.Thread(target=self._pump_in, args=(client, proc), daemon=True).start()
            threading.Thread(target=self._pump_out, args=(client, proc), daemon=True).start()

    @staticmethod
    def _pump_in(client: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        try:
            while data := client.recv(65536):
                proc.stdin.write(data)
                proc.stdin.flush()
        except OSError:
            pass
        finally:
            proc.stdin.close()

    @staticmethod
    def _pump_out(client: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            while data := os.read(proc.stdout.fileno(), 65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            proc.wait()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def agent_relay(gated: Gated, docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Path]:
    relay = AgentRelay(bottle_container(docker_client, gated.bottle_id), tmp_path / "agent.sock")
    try:
        yield relay.path
    finally:
        relay.close()


def outside_login(agent: Path, ip: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            f"IdentityAgent={agent}",
            "-o",
            "IdentitiesOnly=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(port),
            f"git@{ip}",
            "echo logged-in",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_agent_serves_no_login_to_any_other_host(gated: Gated, agent_relay: Path) -> None:
    # Someone outside holding the bottle's agent (relayed out through `docker exec`) tries the stranger,
    # which accepts the very same key: the agent must refuse to sign for it.
    res = outside_login(agent_relay, gated.world.stranger_ip, 22)
    assert "logged-in" not in res.stdout, res.stderr
    assert "Permission denied" in res.stderr, res.stderr


# -- bounded logs --------------------------------------------------------------------------------------------------

# A request for a path longer than git daemon's base path allows: it echoes the path (about 4 KiB) into its log.
FLOOD = (
    "import socket\n"
    "for i in range(3000):\n"
    "    body = b'git-upload-pack /' + b'p' * 60000 + b'%06d\\0host=x\\0' % i\n"
    "    s = socket.create_connection(('127.0.0.1', 9418), timeout=5)\n"
    "    try:\n"
    "        s.sendall(b'%04x' % (len(body) + 4) + body)\n"
    "        s.shutdown(socket.SHUT_WR)\n"
    "        while s.recv(65536):\n"
    "            pass\n"
    "    except OSError:\n"
    "        pass\n"
    "    s.close()\n"
)


def log_files(client: docker.DockerClient, container: str) -> list[Path]:
    """The files the engine keeps a container's log in on this machine, rotated ones included."""
    path = Path(client.api.inspect_container(container)["LogPath"])
    return sorted(path.parent.glob(path.name + "*"))


async def test_a_flood_of_malformed_requests_leaves_the_gates_log_bounded(
    gated: Gated, docker_client: docker.DockerClient
) -> None:
    gates = docker_client.api.containers(filters={"label": [f"{L.BOTTLE}={gated.bottle_id}", f"{L.PREFIX}.gate=gate"]})
    gate = str(gates[0]["Id"])
    log = docker_client.api.inspect_container(gate)["HostConfig"]["LogConfig"]
    assert log["Type"] == "json-file" and log["Config"].get("max-size") and log["Config"].get("max-file"), log
    bound = parse_size(log["Config"]["max-size"]) * int(log["Config"]["max-file"])
    before = sum(p.stat().st_size for p in log_files(docker_client, gate))
    res = await gated.sh(f"python3 -c {shlex.quote(FLOOD)}", timeout_s=300)
    assert res.exit_code == 0, res.stderr
    files = log_files(docker_client, gate)
    after = sum(p.stat().st_size for p in files)
    text = docker_client.api.logs(gate, stdout=True, stderr=True, tail=5).decode(errors="replace")
    print(f"gate log on disk: {before} bytes before, {after} in {len(files)} file(s) after 3,000 malformed requests")
    assert "base-path too large" in text, "the flood did not reach the gate's log: the test would prove nothing"
    assert len(files) > 1, "the flood did not even fill one log file: the test would prove nothing"
    # Unbounded, these 3,000 requests leave about 12.5 MB; the engine's JSON framing counts against max-size.
    assert after <= bound + 64 * 1024, f"the gate's log grew to {after} bytes (bound {bound})"


async def test_every_container_of_a_bottle_has_a_bounded_log(gated: Gated, docker_client: docker.DockerClient) -> None:
    found = docker_client.api.containers(filters={"label": [f"{L.BOTTLE}={gated.bottle_id}"]})
    assert len(found) >= 3  # the bottle, the gate and its forwarder
    for c in found:
        log = docker_client.api.inspect_container(c["Id"])["HostConfig"]["LogConfig"]
        assert log["Type"] == "local" or log["Config"].get("max-size"), (c["Names"], log)
