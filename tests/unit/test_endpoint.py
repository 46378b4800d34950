"""Which engine the server talks to: the Docker CLI's order of precedence, and a fix per failure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bottle_mcp.backends.docker.endpoint import DEFAULT_SOCKET, ENV_CONTEXT, Endpoint, failure_fix, resolve
from bottle_mcp.errors import EngineError


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Docker CLI configuration folder of the test's own, with two contexts."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", ENV_CONTEXT):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.json").write_text("{}")
    _write_context(tmp_path, "remote", "ssh://builder@enginehost")
    _write_context(tmp_path, "tcpctx", "tcp://127.0.0.1:23750")
    return tmp_path


def _write_context(config: Path, name: str, host: str) -> None:
    """A context stored the way `docker context create NAME --docker host=HOST` stores it."""
    meta = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    endpoints = {"docker": {"Host": host, "SkipTLSVerify": False}}
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {}, "Endpoints": endpoints}))


def test_without_anything_the_local_socket_is_used(docker_config: Path) -> None:
    ep = resolve(environ={})
    assert (ep.url, ep.source, ep.transport) == (DEFAULT_SOCKET, "the default socket", "unix")


def test_the_cli_current_context_is_honoured(docker_config: Path) -> None:
    (docker_config / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    ep = resolve(environ={})
    assert ep.url == "ssh://builder@enginehost"
    assert ep.transport == "ssh" and ep.context == "remote" and "current context" in ep.source


def test_docker_context_beats_the_current_context(docker_config: Path) -> None:
    (docker_config / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    ep = resolve(environ={"DOCKER_CONTEXT": "tcpctx"})
    assert (ep.url, ep.source) == ("tcp://127.0.0.1:23750", "DOCKER_CONTEXT=tcpctx")


def test_docker_host_beats_docker_context_as_with_the_docker_cli(docker_config: Path) -> None:
    ep = resolve(environ={"DOCKER_CONTEXT": "remote", "DOCKER_HOST": "tcp://127.0.0.1:2375"})
    assert (ep.url, ep.source, ep.transport) == ("tcp://127.0.0.1:2375", "DOCKER_HOST", "tcp")


def test_an_explicit_context_beats_docker_host(docker_config: Path) -> None:
    ep = resolve("remote", environ={"DOCKER_HOST": "tcp://127.0.0.1:2375"})
    assert ep.url == "ssh://builder@enginehost" and ep.source == "--context remote"
    ep = resolve(environ={"DOCKER_HOST": "tcp://127.0.0.1:2375", ENV_CONTEXT: "tcpctx"})
    assert ep.source == "--context tcpctx"


def test_an_unknown_context_says_how_to_list_them(docker_config: Path) -> None:
    with pytest.raises(EngineError, match=r"no Docker context named 'nope'.*docker context ls"):
        resolve(environ={"DOCKER_CONTEXT": "nope"})


def test_tls_settings_come_from_the_environment(tmp_path: Path, docker_config: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not a real certificate\n")
    ep = resolve(
        environ={"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    )
    assert ep.transport == "tcp+tls" and ep.tls is not None and ep.tls.verify


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("Host key verification failed.", "known_hosts"),
        ("root@127.0.0.1: Permission denied (publickey).", "ssh-add"),
        ("bash: line 1: docker: command not found", "docker CLI on its PATH"),
        ("no `ssh` client is installed", "apt-get install openssh-client"),
        ("Connection aborted", "ssh enginehost docker version"),
    ],
)
def test_each_ssh_failure_gets_its_own_fix(detail: str, expected: str) -> None:
    assert expected in failure_fix(Endpoint("ssh://enginehost", "DOCKER_HOST"), detail)


def test_tls_and_plain_failures_get_their_own_fix() -> None:
    tls = Endpoint("https://127.0.0.1:2376", "DOCKER_HOST", tls=object())  # type: ignore[arg-type]
    assert "DOCKER_CERT_PATH" in failure_fix(tls, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "DOCKER_HOST" in failure_fix(Endpoint("tcp://127.0.0.1:1", "DOCKER_HOST"), "Connection refused")
    ctx = Endpoint("tcp://127.0.0.1:1", "DOCKER_CONTEXT=x", context="x")
    assert "context 'x'" in failure_fix(ctx, "Connection refused")
