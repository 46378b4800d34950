"""Backends that run bottles, selected by BOTTLE_MCP_BACKEND (default: docker)."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import BackendNotFoundError
from ..labels import Instance
from .base import Backend, Bottle


def _docker(instance: Instance) -> Backend:
    from .docker import DockerBackend

    return DockerBackend(instance)


def _fake(instance: Instance) -> Backend:
    from .fake import FakeBackend

    return FakeBackend(instance)


BACKENDS: dict[str, Callable[[Instance], Backend]] = {"docker": _docker, "fake": _fake}


def get_backend(instance: Instance, name: str | None = None) -> Backend:
    """The backend named by `name`, else by BOTTLE_MCP_BACKEND, else docker."""
    chosen = name or os.environ.get("BOTTLE_MCP_BACKEND") or "docker"
    if chosen not in BACKENDS:
        raise BackendNotFoundError(chosen, list(BACKENDS))
    return BACKENDS[chosen](instance)


__all__ = ["BACKENDS", "Backend", "Bottle", "get_backend"]
