"""Bounded logs for every container the server creates.

A container's output goes to the engine's log driver; with json-file and no limit
a bottle (or anyone who can make a sidecar print, such as a bottle sending
malformed requests to its git gate) can fill the host's disk. Every container
gets json-file with rotation: at most `files` files of `max_size` each (json-file,
not `local`, so that the engine can still return the log to the server).
"""

from __future__ import annotations

import docker

# Bottles and gates print little of value to their own log: 2 x 1 MiB at most.
MAX_SIZE = "1m"
MAX_FILES = 2


def bounded(max_size: str = MAX_SIZE, files: int = MAX_FILES) -> docker.types.LogConfig:
    return docker.types.LogConfig(type="json-file", config={"max-size": max_size, "max-file": str(files)})
