"""Approvals a person gives ahead, on the server's machine, for one plan digest each.

Some hosts cannot put a question to their user (Claude Code in `-p` mode cancels every
elicitation at once). The person then approves the exact plan beforehand:

    bottle-mcp plan AGENT            # review it; note its "digest"
    bottle-mcp approve DIGEST        # valid for one launch, within --valid-for (default 1 hour)

`launch_bottle` with a plan of that digest then launches without asking and uses the approval
up. The file is JSON lines, mode 0600, next to the approvals log's default folder (or
$BOTTLE_MCP_PREAPPROVALS); it is as safe as that folder: whoever can write it can approve.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_PATH = "BOTTLE_MCP_PREAPPROVALS"
FILE_NAME = "preapproved.jsonl"
DIGEST_RE = re.compile(r"[0-9a-f]{16}")
DEFAULT_VALID_S = 3600


def preapprovals_path() -> Path:
    env = os.environ.get(ENV_PATH)
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "bottle-mcp" / FILE_NAME


class PreApprovals:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, object]]]:
        """The live entries, under an exclusive lock; what the caller leaves in the list is written back."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            now = time.time()
            entries = []
            for line in f.read().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and float(entry.get("expires", 0)) > now:
                    entries.append(entry)
            yield entries
            f.seek(0)
            f.truncate()
            f.write("".join(json.dumps(e) + "\n" for e in entries))

    def add(self, digest: str, valid_s: float = DEFAULT_VALID_S) -> dict[str, object]:
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(
                f"{digest[:40]!r} is not a plan digest: it is 16 hex digits, the 'digest' field of the plan "
                "(`bottle-mcp plan AGENT` or prepare_bottle shows it)"
            )
        entry: dict[str, object] = {
            "digest": digest,
            "approved_at": time.time(),
            "expires": time.time() + valid_s,
            "by": os.environ.get("USER", ""),
        }
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.get("digest") != digest] + [entry]
        return entry

    def holds(self, digest: str) -> bool:
        if not self.path.exists():
            return False
        with self._locked() as entries:
            return any(e.get("digest") == digest for e in entries)

    def take(self, digest: str) -> bool:
        """Use up the approval of `digest`; False when there is none (any more)."""
        if not self.path.exists():
            return False
        with self._locked() as entries:
            kept = [e for e in entries if e.get("digest") != digest]
            found = len(kept) != len(entries)
            entries[:] = kept
        return found
