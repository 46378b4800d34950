"""Where the engine is, decided the way Docker's own CLI decides it, and how to reach it.

Order of precedence (as `docker` itself): an explicit context (`--context NAME`), then
`DOCKER_HOST` (with `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH` for TLS), then `DOCKER_CONTEXT`,
then the current context of the Docker CLI's configuration (`docker context use NAME`), then
the local socket. An `ssh://` address goes through the system's `ssh` client, so the
user's `~/.ssh/config`, agent and `known_hosts` apply, as they do for `docker -H ssh://...`.

Failures are explained per transport: each cause (no ssh client, a refused key, an unknown
host key, a certificate the engine or we do not accept, nothing listening) gets its own fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.tls
from docker.context import ContextAPI
from docker.utils import kwargs_from_env

from ...errors import EngineError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Set by the CLI's --context: an explicit choice, so it beats DOCKER_HOST.
ENV_CONTEXT = "BOTTLE_MCP_DOCKER_CONTEXT"
TLS_API_VERSION = "1.41"


@dataclass(frozen=True)
class Endpoint:
    """An engine address and where it came from."""

    url: str
    source: str
    tls: docker.tls.TLSConfig | None = None
    context: str | None = None

    @property
    def transport(self) -> str:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "unix"
        if scheme in {"tcp", "http", "https"}:
            return "tcp+tls" if self.tls is not None else "tcp"
        return scheme

    def describe(self) -> str:
        return f"{self.url} (from {self.source})"


def resolve(context: str | None = None, environ: Mapping[str, str] | None = None) -> Endpoint:
    """Pick the engine's address; raises EngineError for a context that does not exist."""
    env = os.environ if environ is None else environ
    context = context or env.get(ENV_CONTEXT)
    if context:
        return _from_context(context, f"--context {context}")
    if env.get("DOCKER_HOST"):
        kwargs: Mapping[str, Any] = kwargs_from_env(environment=dict(env))
        tls = kwargs.get("tls")
        return Endpoint(
            url=str(kwargs.get("base_url") or env["DOCKER_HOST"]),
            source="DOCKER_HOST",
            tls=tls if isinstance(tls, docker.tls.TLSConfig) else None,
        )
    if env.get("DOCKER_CONTEXT"):
        name = env["DOCKER_CONTEXT"]
        return _from_context(name, f"DOCKER_CONTEXT={name}")
    current = _current_context_name()
    if current and current != "default":
        return _from_context(current, f"the Docker CLI's current context {current!r}")
    return Endpoint(url=DEFAULT_SOCKET, source="the default socket")


def _current_context_name() -> str | None:
    try:
        ctx = ContextAPI.get_current_context()
    except Exception:  # an unreadable CLI configuration counts as none, like the CLI's own fallback
        return None
    return None if ctx is None else str(ctx.Name)


def _from_context(name: str, source: str) -> Endpoint:
    if name == "default":
        return Endpoint(url=DEFAULT_SOCKET, source=source, context=name)
    try:
        ctx = ContextAPI.get_context(name)
    except docker.errors.DockerException as e:
        raise EngineError(f"the Docker context {name!r} ({source}) cannot be read: {e}") from None
    if ctx is None:
        raise EngineError(
            f"there is no Docker context named {name!r} ({source}); list them with `docker context ls`, "
            "or create it with `docker context create NAME --docker host=...`"
        )
    host = ctx.Host
    if not host:
        raise EngineError(f"the Docker context {name!r} ({source}) names no engine address")
    tls = ctx.TLSConfig
    return Endpoint(
        url=str(host),
        source=source,
        tls=tls if isinstance(tls, docker.tls.TLSConfig) else None,
        context=name,
    )


def connect(endpoint: Endpoint, *, max_pool_size: int, timeout: int) -> docker.DockerClient:
    """A docker-py client for the endpoint (ssh:// through the system's ssh client)."""
    kwargs: dict[str, Any] = {"base_url": endpoint.url, "max_pool_size": max_pool_size, "timeout": timeout}
    if endpoint.tls is not None:
        kwargs["tls"] = endpoint.tls
        # Pinned: asking the engine for its version happens inside the constructor, before the
        # CA fix below can apply. 1.41 (Docker 20.10) is the oldest API the backend supports.
        kwargs["version"] = TLS_API_VERSION
    if endpoint.transport == "ssh":
        if shutil.which("ssh") is None:
            raise EngineError(
                f"the engine at {endpoint.describe()} is reached over SSH, but no `ssh` client is installed: "
                "install OpenSSH's client (apt-get install openssh-client) and retry"
            )
        kwargs["use_ssh_client"] = True
        kwargs["base_url"] = _with_ssh_port(endpoint.url)
    client = docker.DockerClient(**kwargs)
    if endpoint.tls is not None:
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the CA docker-py sets for each
        # request, so with either set (common behind corporate proxies) the engine's own CA was
        # ignored and every handshake failed. The engine's CA is the only one that should count.
        client.api.trust_env = False
    return client


def _with_ssh_port(url: str) -> str:
    """`ssh://host` with the port ssh itself would use for host (from ~/.ssh/config and defaults).

    docker-py adds ":22" to an ssh:// address without a port and passes it as `ssh -p 22`, which
    would override a `Port` line of the user's ssh configuration; asking `ssh -G` keeps it.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.port is not None or not parsed.hostname:
        return url
    target = f"{parsed.username}@{parsed.hostname}" if parsed.username else parsed.hostname
    try:
        out = subprocess.run(["ssh", "-G", "--", target], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return url
    port = next((line.split()[1] for line in out.splitlines() if line.startswith("port ")), "22")
    return f"{url.rstrip('/')}:{port}"


def failure_fix(endpoint: Endpoint, detail: str) -> str:
    """The fix for a failure to reach the endpoint, chosen by transport and by what went wrong."""
    text = detail.lower()
    where = endpoint.describe()
    host = endpoint.url.split("://", 1)[-1]
    if endpoint.transport == "ssh":
        if "no `ssh` client" in text or "no such file or directory: 'ssh'" in text:
            return "install OpenSSH's client (apt-get install openssh-client)"
        if "host key verification failed" in text or "remote host identification has changed" in text:
            return (
                f"the SSH host key of {host} is unknown or changed: check it, then connect once with "
                f"`ssh {host}` to record it in ~/.ssh/known_hosts"
            )
        if "permission denied" in text:
            return (
                f"{host} refused the SSH key: load it into your agent (ssh-add) or name it in ~/.ssh/config "
                f"(IdentityFile), and check that `ssh {host} docker version` works"
            )
        if "command not found" in text or "dial-stdio" in text:
            return f"{host} needs the docker CLI on its PATH (it runs `docker system dial-stdio` there)"
        return f"check that `ssh {host} docker version` works from this machine, as the user running bottle-mcp"
    if endpoint.transport == "tcp+tls" or "certificate" in text or "ssl" in text:
        return (
            "the TLS handshake with the engine failed: check DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem) or the "
            "context's TLS material, that the engine's certificate names the host you connect to, and "
            "DOCKER_TLS_VERIFY"
        )
    if endpoint.context:
        return f"start the engine of the Docker context {endpoint.context!r} ({where}), or switch contexts"
    if endpoint.source == "DOCKER_HOST":
        return f"start the engine at {endpoint.url} or point DOCKER_HOST at a running one"
    return "start the Docker engine (scripts/setup.sh starts a local one), or set DOCKER_HOST or a Docker context"
