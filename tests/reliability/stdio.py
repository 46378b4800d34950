"""A bare JSON-RPC client over a `bottle-mcp serve` child we own (so we can signal and kill it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


class RawServer:
    def __init__(self, manifest: Path, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        # A file, not a pipe: a server that logs much never blocks on it, and a failure can show the log.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server it logs)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bottle_mcp", "serve", "--manifest", str(manifest), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self._id = 0
        init = self.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        )
        assert "result" in init, init
        self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _write(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def _send(self, method: str, params: dict[str, Any]) -> int:
        self._id += 1
        self._write({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        return self._id

    def _collect(self, ids: set[int]) -> dict[int, dict[str, Any]]:
        assert self.proc.stdout
        got: dict[int, dict[str, Any]] = {}
        while ids - set(got):
            line = self.proc.stdout.readline()
            assert line, "the server closed its output"
            msg = json.loads(line)
            if msg.get("id") in ids:
                got[msg["id"]] = msg
        return got

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = self._send(method, params)
        return self._collect({rid})[rid]

    def call_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Send every tools/call at once (they run concurrently), return the results in order."""
        ids = [self._send("tools/call", {"name": name, "arguments": args}) for name, args in calls]
        got = self._collect(set(ids))
        return [got[i]["result"] for i in ids]

    def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.call_many([(name, args)])[0]

    def ok(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        res = self.call(name, args)
        assert not res.get("isError"), f"{res}\nthe server's log:\n{self.stderr_text()[-4000:]}"
        return res["structuredContent"]  # type: ignore[no-any-return]

    def launch(self, n: int, agent: str = "worker") -> list[str]:
        plans = self.call_many([("prepare_bottle", {"agent": agent})] * n)
        launched = self.call_many([("launch_bottle", {"plan_id": p["structuredContent"]["plan_id"]}) for p in plans])
        assert not any(r.get("isError") for r in launched), launched
        return [r["structuredContent"]["bottle_id"] for r in launched]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
