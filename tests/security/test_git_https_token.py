"""An HTTPS git remote's token: the bottle clones and pushes with a stand-in, the git host sees the real token.

Git sends the token as the password of Basic auth (base64 of `user:token`); the proxy
decodes it, puts the real token in place of the stand-in for the declared git host only,
and encodes it again. The git host is the test's own container (`git http-backend` behind
HTTPS with a throw-away CA, given to the proxy through `upstream_ca`).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from ..outside import ALLOW_PRIVATE, engine_view, hits, start_host

pytestmark = pytest.mark.anyio

# Like the rest of this suite, it needs the local engine's embedded DNS for the test's own host names.

GIT_SCRIPT = Path(__file__).with_name("git_https.py").read_text()
NAMES = ["git.forge.test", "mirror.forge.test"]
HELPER = '!f() { echo username=x-access-token; echo "password=$FORGE_TOKEN"; }; f'

CLONE_AND_PUSH = f"""set -e
h='{HELPER}'
git -c credential.helper="$h" clone -q https://git.forge.test/repo.git repo
cd repo
echo 'from the bottle' > CHANGE
git add CHANGE
git -c user.name=bottle -c user.email=bottle@example.invalid commit -q -m 'pushed from the bottle'
git -c credential.helper="$h" push -q origin main
echo PUSHED
"""


def _manifest(tmp_path: Path, worker_image: str, ca_pem: str) -> Path:
    (tmp_path / "forge-ca.pem").write_text(ca_pem)
    path = tmp_path / "forge.toml"
    path.write_text(
        f"""
[bottles.forge]
image = "{worker_image}"
runtime = "runc"
network = "egress"

[bottles.forge.egress]
allow = ["git.forge.test", "mirror.forge.test"]
upstream_ca = "{tmp_path / "forge-ca.pem"}"
{ALLOW_PRIVATE}
[bottles.forge.egress.credentials]
FORGE_TOKEN = ["git.forge.test"]

[agents.coder]
bottle = "forge"
command = ["true"]
credentials = ["FORGE_TOKEN"]
"""
    )
    return path


async def test_git_clones_and_pushes_over_https_with_a_stand_in_token(
    docker_client: docker.DockerClient, worker_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "ghp_" + secrets.token_urlsafe(27)[:36]
    monkeypatch.setenv("FORGE_TOKEN", token)
    net = f"bottle-mcp-test-forge-{secrets.token_hex(4)}"
    docker_client.api.create_network(net, labels=Instance.current().labels("network", **{L.BOTTLE: "test-forge"}))
    forge_id: str | None = None
    service: BottleService | None = None
    try:
        forge_id, ca_pem = start_host(
            docker_client,
            net,
            GIT_SCRIPT,
            NAMES,
            {"EXPECT_TOKEN_SHA256": hashlib.sha256(token.encode()).hexdigest()},
            "forge",
        )
        service = BottleService(
            ServiceConfig(manifest_path=_manifest(tmp_path, worker_image, ca_pem), cwd=tmp_path, host_roots=[tmp_path]),
            DockerBackend(Instance.current()),
        )
        with anyio.fail_after(180):
            plan = await service.prepare("coder")
            assert [(c.name, c.in_bottle, c.substituted_for) for c in plan.credentials] == [
                ("FORGE_TOKEN", "stand-in", ["git.forge.test"])
            ]
            bottle_id = (await service.launch(plan.plan_id)).bottle_id
            bottle = next(b for b in service.live_bottles if b.id == bottle_id)
            assert bottle.egress is not None  # type: ignore[attr-defined]
            docker_client.api.connect_container_to_network(
                forge_id,
                bottle.egress.network_name,  # type: ignore[attr-defined]
                aliases=NAMES,
            )
            stand_in = (await service.exec(bottle_id, 'printf %s "$FORGE_TOKEN"')).stdout
            assert stand_in.startswith("ghp_") and len(stand_in) == len(token) and stand_in != token

            res = await service.exec(bottle_id, CLONE_AND_PUSH, timeout_s=120)
            assert res.exit_code == 0 and "PUSHED" in res.stdout, res
            pushed = docker_client.containers.get(forge_id).exec_run(
                ["git", "-C", "/srv/git/repo.git", "log", "--format=%s", "main"]
            )
            assert b"pushed from the bottle" in pushed.output, pushed.output

            seen = hits(docker_client, forge_id)
            authed = [h for h in seen if h[3] != "auth=none"]
            assert any(h[2].endswith("/git-receive-pack") for h in authed), seen
            assert authed and all(h[3] == "auth=real" for h in authed), seen

            # The same stand-in to another allowed host of the same git server: refused, nothing arrives.
            res = await service.exec(
                bottle_id,
                f"h='{HELPER}'; git -c credential.helper=\"$h\" ls-remote https://mirror.forge.test/repo.git 2>&1; "
                'git -c http.extraHeader="Authorization: Bearer $FORGE_TOKEN" '
                "ls-remote https://mirror.forge.test/repo.git 2>&1; true",
                timeout_s=60,
            )
            assert "403" in res.stdout, res
            authed_mirror = [
                h for h in hits(docker_client, forge_id) if h[0] == "mirror.forge.test" and h[3] != "auth=none"
            ]
            assert authed_mirror == [], authed_mirror
            log = await service.egress_log(bottle_id)
            assert any(
                d.action == "deny" and d.host == "mirror.forge.test" and "FORGE_TOKEN" in d.reason
                for d in log.decisions
            )
            assert token not in engine_view(docker_client, bottle_id)
            assert token not in log.model_dump_json()
    finally:
        if service is not None:
            await service.aclose()
        if forge_id is not None:
            docker_client.api.remove_container(forge_id, force=True)
        docker_client.api.remove_network(net)
