"""The Claude Code bottle of manifests/claude.toml, when its image has been built.

CI does not build that image (about a minute and 1.2 GB); build it with
`bottle-mcp images --manifest manifests/claude.toml` to run this test. Without network
or key, Claude Code cannot reach the model: the test checks that it starts with the
exact command line the server gives it and that a cancel leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import docker
import pytest

from bottle_mcp.backends.docker import DockerBackend
from bottle_mcp.labels import Instance
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import REPO

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
    service = BottleService(
        ServiceConfig(manifest_path=REPO / "manifests" / "claude.toml", cwd=tmp_path, host_roots=[tmp_path]),
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
