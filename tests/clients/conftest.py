"""Third-party MCP clients (MCP Inspector CLI, the official conformance suite) against this server.

They run on a private Node 22 installed by scripts/third-party-clients.sh into .cache/ (once;
later runs reuse it). Locally, a machine without npm skips these tests with the reason; in CI
(CI=true) that is a failure, since scripts/setup.sh installs npm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import IN_CI, REPO

SCRIPT = REPO / "scripts" / "third-party-clients.sh"
INSTALL_TIMEOUT_S = 600
CALL_TIMEOUT_S = 120


@dataclass(frozen=True)
class Clients:
    script: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A small environment, with HOME in a scratch folder so the tools write nothing of the user's."""
        env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR", "DOCKER_HOST") if k in os.environ}
        return {**env, "HOME": str(self.home), "NO_COLOR": "1", **extra}

    def run(
        self, tool: str, args: Sequence[str], *, cwd: Path, timeout: float = CALL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script), tool, *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def server_argv(manifest: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bottle_mcp", "serve", "--manifest", str(manifest), "--on-exit", "remove", *extra]


@pytest.fixture(scope="session")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Clients:
    if shutil.which("npm") is None:
        reason = "npm is not installed (scripts/setup.sh installs it)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [str(SCRIPT), "install"], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"installing the third-party clients failed:\n{done.stderr[-3000:]}"
    return Clients(script=SCRIPT, home=tmp_path_factory.mktemp("clients-home"))
