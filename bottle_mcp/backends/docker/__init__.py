"""Bottles as hardened Docker containers."""

from .backend import DockerBackend
from .engine import Engine

__all__ = ["DockerBackend", "Engine"]
