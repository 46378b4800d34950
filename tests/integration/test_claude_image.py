"""The Claude Code bottle of manifests/claude.toml, when its image has been built.

CI does not build that image (about a minute and 1.2 GB); build it with
`bottle-mcp images --manifest manifests/claude.toml` to run this test. Without network
or key, Claude Code cannot reach the model: the test checks that it starts with the
exact command line the server gives it and that a cancel leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from pathlib import Path

import anyio
import docker
import pytest

from bottle_mcp import labels as L
from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import load_manifest
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import REPO
from ..outside import ALLOW_PRIVATE, engine_view, hits, start_host

pytestmark = pytest.mark.anyio

CLAUDE_IMAGE = "bottle-mcp/claude:latest"


async def test_claude_code_runs_in_its_bottle_reports_results_and_is_cancelled_cleanly(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        docker_client.images.get(CLAUDE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{CLAUDE_IMAGE} is not built; run `bottle-mcp images --manifest manifests/claude.toml`")
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # The example grants egress to the real model API; this test must not reach it, so it runs the same
    # bottle without a network.
    text = (REPO / "manifests" / "claude.toml").read_text()
    offline = text.replace('network = "egress"\n', 'network = "none"\n').replace(
        'context = "../bottle_mcp/', f'context = "{REPO}/bottle_mcp/'
    )
    offline = (
        offline[: offline.index("[bottles.claude.egress]")] + offline[offline.index("[bottles.claude.resources]") :]
    )
    manifest = tmp_path / "claude-offline.toml"
    manifest.write_text(offline)
    bottle = load_manifest(manifest).manifest.bottles["claude"]
    assert bottle.network == "none" and bottle.egress is None
    service = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=tmp_path, host_roots=[tmp_path]),
        DockerBackend(Instance.current()),
    )
    messages: list[str] = []

    async def progress(_elapsed: float, message: str) -> None:
        messages.append(message)

    try:
        with anyio.fail_after(180):
            # Without credentials, Claude Code answers at once that it is not logged in: a real result to parse.
            plan = await service.prepare("claude")
            assert plan.network.effective == "none" and plan.prompt is not None
            bid = (await service.launch(plan.plan_id)).bottle_id
            assert "(Claude Code)" in (await service.exec(bid, "claude --version")).stdout
            job = await service.delegate.run_agent(bid, "Say hi.", timeout_s=300, workdir=None)
            assert job.command[-4:] == [
                "--append-system-prompt-file",
                plan.prompt.bottle_path,
                "<",
                "(the prompt, on stdin)",
            ]
            res = await service.delegate.wait_job(job.job_id, timeout_s=60, cursor=None)
            assert res.done and res.agent_result is not None
            assert res.agent_result.is_error and res.agent_result.cost_usd == 0.0
            assert res.agent_result.final_answer and "log" in res.agent_result.final_answer.lower()

            # With a key (a fake one) it keeps retrying the unreachable API until cancelled.
            monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key-000000")
            plan = await service.prepare("claude")
            bid = (await service.launch(plan.plan_id)).bottle_id
            job = await service.delegate.run_agent(bid, "Say hi.", timeout_s=300, workdir=None)
            while not any("model API unreachable" in m for m in messages):
                res = await service.delegate.wait_job(job.job_id, timeout_s=5, cursor=None, progress=progress)
                assert not res.done, (res.job, res.agent_result)
            cancelled = await service.delegate.cancel_job(job.job_id)
            assert cancelled.job.status == "cancelled" and cancelled.processes_left == 0
            assert "claude" not in (await service.exec(bid, "ps -eo args")).stdout
    finally:
        await service.aclose()


MODEL_SCRIPT = (Path(__file__).with_name("model_api.py")).read_text()
PROBES = (REPO / "tests" / "security" / "probes.py").read_bytes()
REPLY = "The stand-in model answers through the proxy."
MODEL_NAMES = ["api.model.test", "other.model.test"]


def _manifest(tmp_path: Path, ca_pem: str) -> Path:
    (tmp_path / "model-ca.pem").write_text(ca_pem)
    text = (REPO / "manifests" / "claude.toml").read_text()
    head, _, tail = text.partition("[bottles.claude.egress]")
    tail = tail[tail.index("[bottles.claude.resources]") :]
    head = head.replace('build = { context = "../bottle_mcp/data/images/claude" }\n', "").replace(
        'env = { LANG = "C.UTF-8" }', 'env = { LANG = "C.UTF-8", ANTHROPIC_BASE_URL = "https://api.model.test" }'
    )
    egress = f"""[bottles.claude.egress]
allow = {json.dumps(MODEL_NAMES)}
upstream_ca = "{tmp_path / "model-ca.pem"}"
{ALLOW_PRIVATE}
[bottles.claude.egress.credentials]
ANTHROPIC_API_KEY = ["api.model.test"]

"""
    both = 'credentials = ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]'
    tail = tail.replace(both, 'credentials = ["ANTHROPIC_API_KEY"]')
    path = tmp_path / "claude-model.toml"
    path.write_text(head + egress + tail)
    return path


async def test_claude_code_answers_through_the_proxy_holding_only_a_stand_in_key(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        docker_client.images.get(CLAUDE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{CLAUDE_IMAGE} is not built; run `bottle-mcp images --manifest manifests/claude.toml`")
    # A key shaped like Anthropic's (a test value: the model API here is the test's own container).
    alphabet = string.ascii_letters + string.digits + "-_"
    real_key = "sk-ant-api03-" + "".join(secrets.choice(alphabet) for _ in range(93)) + "AA"
    monkeypatch.setenv("ANTHROPIC_API_KEY", real_key)
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
    net = f"bottle-mcp-test-model-{secrets.token_hex(4)}"
    docker_client.api.create_network(net, labels=Instance.current().labels("network", **{L.BOTTLE: "test-model"}))
    model_id: str | None = None
    service: BottleService | None = None
    try:
        model_id, ca_pem = start_host(
            docker_client,
            net,
            MODEL_SCRIPT,
            MODEL_NAMES,
            {"EXPECT_KEY_SHA256": hashlib.sha256(real_key.encode()).hexdigest(), "REPLY_TEXT": REPLY},
            "model-api",
        )
        manifest = _manifest(tmp_path, ca_pem)
        service = BottleService(
            ServiceConfig(manifest_path=manifest, cwd=tmp_path, host_roots=[tmp_path]),
            DockerBackend(Instance.current()),
        )
        with anyio.fail_after(420):
            plan = await service.prepare("claude")
            [cred] = plan.credentials
            assert (cred.name, cred.in_bottle, cred.substituted_for) == (
                "ANTHROPIC_API_KEY",
                "stand-in",
                ["api.model.test"],
            )
            assert real_key not in plan.model_dump_json()
            launched = await service.launch(plan.plan_id)
            bottle = next(b for b in service.live_bottles if b.id == launched.bottle_id)
            assert isinstance(bottle, DockerBottle) and bottle.egress is not None
            docker_client.api.connect_container_to_network(model_id, bottle.egress.network_name, aliases=MODEL_NAMES)

            stand_in = (await service.exec(bottle.id, 'printf %s "$ANTHROPIC_API_KEY"')).stdout
            assert stand_in.startswith("sk-ant-api03-") and len(stand_in) == len(real_key) and stand_in != real_key

            job = await service.delegate.run_agent(bottle.id, "Say hi.", timeout_s=300, workdir=None)
            res = await service.delegate.wait_job(job.job_id, timeout_s=240, cursor=None)
            while not res.done:
                res = await service.delegate.wait_job(job.job_id, timeout_s=240, cursor=res.cursor)
            seen = hits(docker_client, model_id)
            assert res.agent_result is not None, (res.job, seen)
            assert not res.agent_result.is_error, (res.agent_result, seen)
            assert res.agent_result.final_answer is not None and REPLY in res.agent_result.final_answer

            # The model API saw the real key on every call that carried one, never the stand-in.
            messages = [h for h in seen if h[2] == "/v1/messages"]
            assert messages and all(h[0] == "api.model.test" and h[3] == "key=real" for h in messages), seen
            stand_in_sha = hashlib.sha256(stand_in.encode()).hexdigest()
            assert not any(h[3] == f"key=sha256:{stand_in_sha}" for h in seen), seen

            # Another allowed host is refused the stand-in and receives nothing.
            sent = await bottle.exec(
                "python3 - send_header https://other.model.test/v1/messages ANTHROPIC_API_KEY x-api-key",
                timeout_s=60,
                workdir=None,
                output_cap=65536,
                stdin=PROBES,
            )
            assert "403" in sent.stdout, sent
            assert not any(h[0].startswith("other.model.test") for h in hits(docker_client, model_id))
            log = await service.egress_log(bottle.id)
            assert any(d.action == "deny" and "ANTHROPIC_API_KEY" in d.reason for d in log.decisions)
            assert real_key not in log.model_dump_json()

            # The real key is in no process's environment and no file of the bottle (searched by hash only).
            out = await bottle.exec(
                f"python3 - find_secret sk-ant-api03- {len(real_key)} "
                f"real={hashlib.sha256(real_key.encode()).hexdigest()} stand-in={stand_in_sha}",
                timeout_s=600,
                workdir=None,
                output_cap=1 << 20,
                stdin=PROBES,
            )
            counts = {line.split()[0]: line.split()[1:] for line in out.stdout.strip().splitlines()}
            assert counts["real"][0] == "0", out
            assert int(counts["stand-in"][0]) >= 1 and "environ" in out.stdout, out
            assert real_key not in engine_view(docker_client, bottle.id)
    finally:
        if service is not None:
            await service.aclose()
        if model_id is not None:
            docker_client.api.remove_container(model_id, force=True)
        docker_client.api.remove_network(net)
