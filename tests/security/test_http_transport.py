"""`serve --http`: nobody but the holder of the bearer token drives bottles, and no web page does.

The real server runs over Streamable HTTP on loopback with the real engine; the SDK's
own HTTP client connects with and without the token, and raw requests try a rebound
Host name and a foreign Origin (DNS rebinding) with the right token.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, TextContent

pytestmark = pytest.mark.anyio
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    def __init__(self, manifest: Path, cwd: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bottle_mcp",
                "serve",
                "--manifest",
                str(manifest),
                "--http",
                f"127.0.0.1:{self.port}",
            ],
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        listening = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if "Uvicorn running on" in line:
                    listening.set()
            listening.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        assert listening.wait(START_TIMEOUT_S) and self.proc.poll() is None, "".join(self.log)

    def printed_token(self) -> str | None:
        for line in self.log:
            m = re.search(r"Authorization: Bearer ([A-Za-z0-9_-]+)'", line)
            if m:
                return m.group(1)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=5)


@pytest.fixture
def manifest(tmp_path: Path, runtime: str, worker_image: str) -> Path:
    del worker_image
    path = tmp_path / "manifest.toml"
    path.write_text(f"""
[host]
keep_for = "0"  # removed when the server goes, not kept
approve = "never"

[bottles.plain]
image = "bottle-mcp/worker:latest"
runtime = "{runtime}"

[agents.plain]
bottle = "plain"
command = ["true"]
""")
    return path


@pytest.fixture
def server(manifest: Path, tmp_path: Path) -> Iterator[HttpServer]:
    srv = HttpServer(manifest, tmp_path, {})
    try:
        yield srv
    finally:
        srv.stop()


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def _status(url: str, headers: dict[str, str]) -> int:
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        '"capabilities":{},"clientInfo":{"name":"probe","version":"1"}}}'
    )
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with create_mcp_http_client(headers={**base, **headers}) as http:
        return int((await http.post(url, content=body)).status_code)


async def test_without_the_token_the_sdk_client_cannot_even_connect(server: HttpServer) -> None:
    assert server.printed_token() is not None, "".join(server.log)
    with anyio.fail_after(30), pytest.raises(Exception):  # noqa: B017, PT011 - the SDK surfaces the 401 as it likes
        async with Client(streamable_http_client(server.url), mode="legacy") as client:
            await client.list_tools()
    async with create_mcp_http_client(headers={"Authorization": "Bearer wrong-token-of-good-length-000"}) as http:
        with anyio.fail_after(30), pytest.raises(Exception):  # noqa: B017, PT011
            async with Client(streamable_http_client(server.url, http_client=http), mode="legacy") as client:
                await client.list_tools()
    assert await _status(server.url, {}) == 401
    assert await _status(server.url, {"Authorization": "Bearer wrong-token-of-good-length-000"}) == 401


async def test_a_rebound_host_name_or_a_foreign_origin_is_refused_even_with_the_token(server: HttpServer) -> None:
    token = server.printed_token()
    auth = {"Authorization": f"Bearer {token}"}
    assert await _status(server.url, {**auth, "Host": f"attacker.example:{server.port}"}) == 421
    assert await _status(server.url, {**auth, "Origin": "http://attacker.example"}) == 403
    assert await _status(server.url, {**auth, "Origin": f"http://127.0.0.1:{server.port}"}) == 200
    assert await _status(server.url, auth) == 200


async def test_with_the_token_the_sdk_client_drives_a_bottle(server: HttpServer) -> None:
    token = server.printed_token()
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
        with anyio.fail_after(120):
            async with Client(streamable_http_client(server.url, http_client=http), mode="legacy") as client:
                plan = _ok(await client.call_tool("prepare_bottle", {"agent": "plain"}))
                bottle = _ok(await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]}))
                res = _ok(await client.call_tool("exec", {"bottle_id": bottle["bottle_id"], "command": "echo hi"}))
                assert res["stdout"] == "hi\n"
                _ok(await client.call_tool("stop_bottle", {"bottle_id": bottle["bottle_id"]}))


async def test_a_token_the_person_gives_is_required_and_never_printed(manifest: Path, tmp_path: Path) -> None:
    given = "given-by-the-person-" + "x" * 20
    srv = HttpServer(manifest, tmp_path, {"BOTTLE_MCP_HTTP_TOKEN": given})
    try:
        assert srv.printed_token() is None and given not in "".join(srv.log)
        assert await _status(srv.url, {"Authorization": f"Bearer {given}"}) == 200
        assert await _status(srv.url, {"Authorization": "Bearer " + "y" * 40}) == 401
    finally:
        srv.stop()
