"""The delegation tools through an in-process MCP client, on the fake backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from bottle_mcp.backends.fake import FakeBackend
from bottle_mcp.labels import Instance
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

SECRET = "sk-test-0123456789abcdef"


@pytest.fixture
async def client(
    write_manifest: ManifestFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    monkeypatch.setenv("BOTTLE_TEST_TOKEN", SECRET)
    manifest = write_manifest(
        """
        [host]
        approve = "never"  # these tests are about delegation, not the approval question

        [bottles.offline]
        image = "bottle-mcp/worker:latest"

        [agents.worker]
        bottle = "offline"
        command = ["agent", "{prompt}"]
        prompt = "Be brief."
        credentials = ["BOTTLE_TEST_TOKEN"]
        """
    )
    root = tmp_path / "root"
    root.mkdir()
    service = BottleService(
        ServiceConfig(manifest_path=manifest, cwd=root, host_roots=[root]), FakeBackend(Instance.current())
    )
    async with Client(build_server(service)) as c:
        yield c


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def _error(result: CallToolResult) -> str:
    assert result.is_error
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def _launch(client: Client) -> str:
    plan = _ok(await client.call_tool("prepare_bottle", {"agent": "worker"}))
    assert [c["name"] for c in plan["credentials"]] == ["BOTTLE_TEST_TOKEN"]
    return str(_ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))["bottle_id"])


async def test_delegation_tools_are_listed(client: Client) -> None:
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"run_agent", "wait_job", "cancel_job", "list_jobs", "cp_out", "fetch_branch", "diff"} <= names


async def test_credential_values_never_come_back_in_results_or_errors(client: Client) -> None:
    with anyio.fail_after(10):
        bid = await _launch(client)
        res = await client.call_tool("exec", {"bottle_id": bid, "command": f"echo token={SECRET}"})
        assert _ok(res)["stdout"] == "token=[redacted BOTTLE_TEST_TOKEN]\n"
        assert all(SECRET not in c.text for c in res.content if isinstance(c, TextContent))
        err = _error(await client.call_tool("exec", {"bottle_id": SECRET, "command": "true"}))
        assert SECRET not in err and "[redacted BOTTLE_TEST_TOKEN]" in err


async def test_cp_out_writes_a_new_file_under_the_root_and_refuses_to_overwrite(client: Client, tmp_path: Path) -> None:
    (tmp_path / "root" / "in.txt").write_text("payload\n")
    with anyio.fail_after(10):
        bid = await _launch(client)
        _ok(await client.call_tool("cp_in", {"bottle_id": bid, "host_path": "in.txt", "bottle_path": "/workspace/a"}))
        out = _ok(
            await client.call_tool("cp_out", {"bottle_id": bid, "bottle_path": "/workspace/a", "host_path": "back.txt"})
        )
        assert out["files"] == 1 and out["host_path"] == str(tmp_path / "root" / "back.txt")
        assert (tmp_path / "root" / "back.txt").read_text() == "payload\n"
        err = _error(
            await client.call_tool("cp_out", {"bottle_id": bid, "bottle_path": "/workspace/a", "host_path": "back.txt"})
        )
        assert "never overwrites" in err
        err = _error(
            await client.call_tool(
                "cp_out", {"bottle_id": bid, "bottle_path": "/workspace/a", "host_path": str(tmp_path / "x")}
            )
        )
        assert "outside the allowed roots" in err
        err = _error(
            await client.call_tool("cp_out", {"bottle_id": bid, "bottle_path": "/nope", "host_path": "nope.txt"})
        )
        assert "does not exist" in err


async def test_commit_tools_need_a_copy_cwd_bottle_and_jobs_need_a_known_id(client: Client) -> None:
    with anyio.fail_after(10):
        bid = await _launch(client)
        err = _error(await client.call_tool("fetch_branch", {"bottle_id": bid, "branch": "agent/x"}))
        assert "copy_cwd=true" in err
        err = _error(await client.call_tool("diff", {"bottle_id": bid}))
        assert "copy_cwd=true" in err
        err = _error(await client.call_tool("wait_job", {"job_id": "j-0000000000"}))
        assert "list_jobs" in err
        err = _error(await client.call_tool("cancel_job", {"job_id": "j-0000000000"}))
        assert "no job" in err
        assert _ok(await client.call_tool("list_jobs", {"bottle_id": bid}))["jobs"] == []
        err = _error(await client.call_tool("run_agent", {"bottle_id": bid, "prompt": "   "}))
        assert "prompt is empty" in err
