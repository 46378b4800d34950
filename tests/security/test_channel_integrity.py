"""Nothing in the bottle can speak for the server on its exec channel.

A hostile background process stops the supervisor, reopens its standard input and
output through /proc and answers the server's requests itself (hijack.py). The
supervisor is not dumpable, so those /proc entries are closed to the bottle's user;
a stopped supervisor is noticed, killed, and the bottle goes on with engine execs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import anyio
import anyio.to_thread
import docker
import pytest

from bottle_mcp.service import BottleService

from .conftest import launch

pytestmark = pytest.mark.anyio

HIJACK = (Path(__file__).parent / "hijack.py").read_bytes()


async def test_a_background_process_cannot_stop_and_replace_the_supervisor(
    sec_service: BottleService, docker_client: docker.DockerClient
) -> None:
    bottle = await launch(sec_service, "plain")

    def read_log() -> str:  # through the engine: the channel may be stopped
        res = docker_client.containers.get(bottle.container_id).exec_run(["cat", "/tmp/hijack.log"], user=bottle.user)
        output = res.output
        assert isinstance(output, bytes)
        return output.decode(errors="replace")

    try:
        res = await bottle.exec("cat > /tmp/hijack.py", timeout_s=30, workdir=None, output_cap=4096, stdin=HIJACK)
        assert res.exit_code == 0, res
        start = f"setsid python3 /tmp/hijack.py /tmp/hijack.log </dev/null >/dev/null 2>&1 & echo {shlex.quote('go')}"
        assert (await sec_service.exec(bottle.id, start)).stdout == "go\n"
        # Wait until the attacker has stopped the supervisor (it writes its log first).
        with anyio.fail_after(20):
            while True:
                if "stopped" in await anyio.to_thread.run_sync(read_log):
                    break
                await anyio.sleep(0.1)
        with anyio.fail_after(60):
            res = await sec_service.exec(bottle.id, "echo real-output; exit 7", timeout_s=30)
        assert "forged" not in res.stdout, res
        assert res.exit_code in (7, None), res
        if res.exit_code is None:
            assert any("exec channel broke" in n for n in res.notes), res.notes
        # Later commands run through the engine, and say so the first time.
        res = await sec_service.exec(bottle.id, "echo real-output; exit 7", timeout_s=30)
        assert (res.exit_code, res.stdout) == (7, "real-output\n"), res
        log = await anyio.to_thread.run_sync(read_log)
        # runc closes the supervisor's /proc entries; gVisor keeps its fd entries open to the same user,
        # and there the sealed, enciphered frames leave the attacker nothing to read or forge.
        assert "open refused" in log or "hijacked" in log, log
        assert "real-output" not in log and '"cmd"' not in log, log
    finally:
        await sec_service.stop(bottle.id)
