"""Label keys on every engine object, and the identity of this server instance.

Leftovers are found by these labels, never by name patterns. The owner label
lets any later process tell whether the server that created an object is still
alive on this host: it is alive when the boot id matches and a process with
that pid and that start time exists.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

PREFIX = "dev.bottle-mcp"
MANAGED = f"{PREFIX}.managed"
INSTANCE = f"{PREFIX}.instance"
OWNER = f"{PREFIX}.owner"
BOTTLE = f"{PREFIX}.bottle"
AGENT = f"{PREFIX}.agent"
BOTTLE_DEF = f"{PREFIX}.bottle-def"
ROLE = f"{PREFIX}.role"
RUNTIME = f"{PREFIX}.runtime"
PLAN = f"{PREFIX}.plan"
CREATED = f"{PREFIX}.created"
RECIPE = f"{PREFIX}.recipe"
POOL = f"{PREFIX}.pool"  # a bottle born as a warm-pool spare; its agent is in its name once claimed

Role = Literal["bottle", "workspace", "network", "sidecar", "reaper"]
# "kept": its server is gone but it is kept, until a deadline, for a later server to adopt (see keep.py).
Liveness = Literal["this-server", "other-server", "orphaned", "kept", "unknown"]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _start_ticks(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class Instance:
    """One running server (or CLI) process, as recorded in labels."""

    id: str
    host: str
    boot_id: str
    pid: int
    start_ticks: str

    @classmethod
    def current(cls) -> Instance:
        pid = os.getpid()
        return cls(
            id=secrets.token_hex(6),
            host=socket.gethostname(),
            boot_id=_boot_id(),
            pid=pid,
            start_ticks=_start_ticks(pid) or "0",
        )

    @property
    def owner(self) -> str:
        return f"{self.host}/{self.boot_id}/{self.pid}/{self.start_ticks}"

    def liveness_of(self, labels: dict[str, str]) -> Liveness:
        """How the instance that created an object with these labels stands, seen from here."""
        if labels.get(INSTANCE) == self.id:
            return "this-server"
        parts = labels.get(OWNER, "").split("/")
        if len(parts) != 4:
            return "unknown"
        host, boot_id, pid, ticks = parts
        if host != self.host or not pid.isdigit():
            return "unknown"
        if boot_id != self.boot_id:
            return "orphaned"
        return "other-server" if _start_ticks(int(pid)) == ticks else "orphaned"

    def labels(self, role: Role, **extra: str) -> dict[str, str]:
        return {MANAGED: "true", INSTANCE: self.id, OWNER: self.owner, ROLE: role, **extra}


def utc_stamp() -> str:
    """Now, in UTC, as the CREATED label and the tools' timestamps write it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
