"""A second Docker engine of our own, over TCP on loopback (scripts/second-engine.sh), for fault tests.

The shared engine is never stopped: faults are injected into this one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from ..conftest import IN_CI, REPO

SCRIPT = REPO / "scripts" / "second-engine.sh"


def engine2(action: str) -> str:
    out = subprocess.run([str(SCRIPT), action], capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"second-engine.sh {action} failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


@pytest.fixture(scope="session")
def second_engine() -> Iterator[str]:
    """DOCKER_HOST of a second engine holding the worker image; stopped at the end."""
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("starting a second dockerd needs root")
    try:
        line = engine2("start")
    except (RuntimeError, OSError) as e:
        if IN_CI:
            raise
        pytest.skip(str(e))
    host = line.removeprefix("DOCKER_HOST=")
    yield host
    engine2("stop")
