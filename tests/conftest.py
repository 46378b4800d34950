"""Shared fixtures: manifests written on the fly, and access to the real engine.

Async test modules carry `pytestmark = pytest.mark.anyio` (asyncio only).
Tests marked `docker` need a real engine. Locally they are skipped with a reason
when none answers; in CI (CI=true) a missing engine fails the run, and a run in
which no `docker` test passed fails too.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

pytest_plugins = ["tests.engine_fixtures"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REPO = Path(__file__).resolve().parent.parent
WORKER_CONTEXT = REPO / "bottle_mcp" / "data" / "images" / "worker"

_docker_state: dict[str, object] = {"checked": False, "error": None, "passed": 0}
# The container runtimes that runtime-parametrized tests really ran under, reported at the end.
RUNTIMES_COVERED: set[str] = set()


def engine_client(timeout: int = 60) -> docker.DockerClient:
    """A client for the engine the server would use (DOCKER_HOST, Docker contexts, ssh:// included)."""
    from bottle_mcp.backends.docker.endpoint import connect, resolve

    return connect(resolve(), max_pool_size=64, timeout=timeout)


def engine_error() -> str | None:
    """None when a Docker engine answers, else why not (checked once per session)."""
    if not _docker_state["checked"]:
        _docker_state["checked"] = True
        try:
            client = engine_client(timeout=10)
            client.ping()
            client.close()
        except Exception as e:  # any failure means: no usable engine
            _docker_state["error"] = f"no Docker engine answers ({type(e).__name__}: {e}); run scripts/setup.sh"
    err = _docker_state["error"]
    return str(err) if err else None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Every test below these folders needs the real engine.
ENGINE_FOLDERS = ("integration", "security", "reliability")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        rel = Path(str(item.path)).relative_to(tests_dir)
        if rel.parts and rel.parts[0] in ENGINE_FOLDERS:
            item.add_marker(pytest.mark.docker)
    docker_items = [i for i in items if i.get_closest_marker("docker")]
    if not docker_items:
        return
    err = engine_error()
    if err is None:
        return
    if IN_CI:
        raise pytest.UsageError(f"CI=true but the engine tests cannot run: {err}")
    skip = pytest.mark.skip(reason=err)
    for item in docker_items:
        item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "docker" in report.keywords:
        _docker_state["passed"] = int(_docker_state["passed"]) + 1  # type: ignore[call-overload]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RUNTIMES_COVERED:
        covered = ", ".join(sorted(RUNTIMES_COVERED))
        terminalreporter.write_line(f"container runtimes covered by the runtime-parametrized tests: {covered}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and exitstatus == 0 and not session.config.option.collectonly:
        selected = session.config.getoption("-m") or ""
        if "not docker" not in selected and _docker_state["passed"] == 0:
            print("\nCI=true but no engine test passed: the Docker tests must run in CI")
            session.exitstatus = 1


ManifestFactory = Callable[..., Path]


@pytest.fixture
def write_manifest(tmp_path: Path) -> ManifestFactory:
    """Write a manifest file (TOML text, dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "manifest.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


MINIMAL = """\
[bottles.offline]
image = "bottle-mcp/worker:latest"

[agents.worker]
bottle = "offline"
command = ["true"]
prompt = "Be brief."
"""


@pytest.fixture
def minimal_manifest(write_manifest: ManifestFactory) -> Path:
    return write_manifest(MINIMAL)
