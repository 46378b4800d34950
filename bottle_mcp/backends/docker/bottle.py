"""A running Docker bottle: exec, copy-in and removal."""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import IO

import anyio

from ...errors import BottleError, BottleGoneError, EngineError, EngineNotFoundError, PathError
from ...models import BottleInfo, EgressDecision, ExecResult, GateEvent
from ...output import safe_text, trim_partial_utf8
from .egress import EgressStack
from .engine import Engine
from .execstream import ExecStream
from .gates import GateStack


def _capped(kept: bytearray, total: int) -> bytes:
    """What was kept of a stream; a character the cap cut in half is dropped, not shown as invalid."""
    return trim_partial_utf8(bytes(kept)) if total > len(kept) else bytes(kept)


UNPACK = 'mkdir -p -- "$1" && exec tar -x --no-same-owner -C "$1" -f -'
# Tar one path to stdout. Exit 3: it does not exist; 4: it, or a folder on the way, is a symlink.
PACK = (
    'p=$1; parent=$(dirname -- "$p"); name=$(basename -- "$p"); '
    '[ -e "$p" ] || [ -L "$p" ] || { echo "$p does not exist" >&2; exit 3; }; '
    'real=$(cd -P -- "$parent" && pwd -P) || exit 3; '
    '[ "$real" = "$parent" ] || { echo "$parent resolves to $real" >&2; exit 4; }; '
    '[ -L "$p" ] && { echo "$p is a symlink to $(readlink -- "$p")" >&2; exit 4; }; '
    'exec tar -c -f - -C "$parent" -- "$name"'
)


class DockerBottle:
    def __init__(
        self,
        engine: Engine,
        *,
        container_id: str,
        volume: str,
        info: BottleInfo,
        user: str,
        egress: EgressStack | None = None,
        gate: GateStack | None = None,
    ) -> None:
        self.egress = egress
        self.gate = gate
        self._engine = engine
        self.container_id = container_id
        self.volume = volume
        self._info = info
        self.user = user
        self._closed = False

    @property
    def id(self) -> str:
        return self._info.bottle_id

    @property
    def info(self) -> BottleInfo:
        return self._info

    async def exec(
        self,
        command: str,
        *,
        timeout_s: float,
        workdir: str | None,
        output_cap: int,
        stdin: bytes | None = None,
    ) -> ExecResult:
        started = time.monotonic()
        stream = ExecStream(
            self._engine,
            self.container_id,
            self.id,
            command,
            user=self.user,
            workdir=workdir,
            timeout_s=timeout_s,
            output_cap=output_cap,
            stdin=stdin,
        )
        try:
            out = await anyio.to_thread.run_sync(stream.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                stream.abort.set()
                await anyio.to_thread.run_sync(stream.done.wait, 5.0)
                await anyio.to_thread.run_sync(stream.kill)
            raise
        if out.timed_out:
            await anyio.to_thread.run_sync(stream.kill)
        if out.exit_code is None and not out.timed_out:
            await self._raise_if_gone()
        stdout, n1 = safe_text(_capped(out.stdout, out.stdout_bytes))
        stderr, n2 = safe_text(_capped(out.stderr, out.stderr_bytes))
        truncated = out.stdout_bytes > len(out.stdout) or out.stderr_bytes > len(out.stderr)
        notes = sorted(set(n1 + n2))
        if truncated:
            notes.insert(
                0,
                f"output was cut at {output_cap} bytes per stream (stdout {out.stdout_bytes} bytes, "
                f"stderr {out.stderr_bytes} bytes in all); redirect to a file in the bottle to keep it",
            )
        if out.timed_out:
            notes.insert(0, f"timed out after {timeout_s:g} s; the command's process group was killed")
        return ExecResult(
            exit_code=out.exit_code,
            stdout=stdout,
            stderr=stderr,
            truncated=truncated,
            stdout_bytes=out.stdout_bytes,
            stderr_bytes=out.stderr_bytes,
            output_cap_bytes=output_cap,
            timed_out=out.timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
            notes=notes,
        )

    async def put_tar(self, tar: IO[bytes], dest_dir: PurePosixPath) -> None:
        stream = ExecStream(
            self._engine,
            self.container_id,
            self.id,
            ["/bin/sh", "-c", UNPACK, "bottle-put", str(dest_dir)],
            user=self.user,
            workdir=None,
            timeout_s=600,
            output_cap=64 * 1024,
            stdin=tar,
        )
        out = await anyio.to_thread.run_sync(stream.run)
        if out.exit_code != 0:
            await self._raise_if_gone()
            detail, _ = safe_text(bytes(out.stderr or out.stdout))
            raise BottleError(
                f"unpacking into {str(dest_dir)!r} failed inside bottle {self.id!r} "
                f"(exit {out.exit_code}): {detail.strip()[:500]}. Pick a folder the bottle's user can write, "
                "such as the workspace."
            )

    async def egress_log(self) -> tuple[list[str], list[EgressDecision]]:
        """The allow-list and the proxy's decisions so far (empty for a bottle without egress)."""
        if self.egress is None:
            return [], []
        return self.egress.allow, await self.egress.decisions()

    async def gate_log(self) -> tuple[dict[str, str], dict[str, str], list[GateEvent]]:
        """Git remotes -> upstreams, ssh aliases -> host:port, and the gate's events (empty without a gate)."""
        if self.gate is None:
            return {}, {}, []
        return self.gate.git_remotes, self.gate.ssh_hosts, await self.gate.events()

    async def get_tar(self, path: PurePosixPath, *, max_bytes: int) -> bytes:
        stream = ExecStream(
            self._engine,
            self.container_id,
            self.id,
            ["/bin/sh", "-c", PACK, "bottle-get", str(path)],
            user=self.user,
            workdir=None,
            timeout_s=600,
            output_cap=max_bytes + 1,
        )
        out = await anyio.to_thread.run_sync(stream.run)
        detail, _ = safe_text(bytes(out.stderr))
        detail = detail.strip()[:500]
        if out.exit_code == 3:
            raise PathError(f"{str(path)!r} does not exist in bottle {self.id!r}: {detail}")
        if out.exit_code == 4:
            raise PathError(
                f"refusing to copy {str(path)!r} out of bottle {self.id!r}: {detail}; "
                "name the real path instead of a symlink"
            )
        if out.stdout_bytes > max_bytes:
            raise PathError(
                f"{str(path)!r} in bottle {self.id!r} is larger than the copy limit of {max_bytes} bytes; "
                "copy a smaller file or folder"
            )
        if out.exit_code != 0:
            await self._raise_if_gone()
            raise BottleError(
                f"packing {str(path)!r} failed inside bottle {self.id!r} (exit {out.exit_code}): {detail}"
            )
        return bytes(out.stdout)

    async def _raise_if_gone(self) -> None:
        try:
            state = await self._engine.call(
                "inspect bottle", lambda c: c.api.inspect_container(self.container_id)["State"]
            )
        except EngineNotFoundError:
            raise BottleGoneError(self.id, "its container no longer exists") from None
        if not state.get("Running"):
            raise BottleGoneError(self.id, f"its container is {state.get('Status', 'stopped')}")

    async def check_alive(self) -> None:
        await self._raise_if_gone()

    async def close(self) -> list[str]:
        if self._closed:
            return []
        removed: list[str] = []
        with anyio.CancelScope(shield=True):
            egress_error: EngineError | None = None
            if self.egress is not None:
                # The forwarder lives in the bottle's network namespace: it goes first. If the engine
                # refuses part of it, the bottle still goes; the error is raised at the end.
                try:
                    removed += await self.egress.remove()
                except EngineError as e:
                    egress_error = e
            gate_error: EngineError | None = None
            if self.gate is not None:
                try:
                    removed += await self.gate.remove()
                except EngineError as e:
                    gate_error = e
            try:
                await self._engine.call(
                    "remove container", lambda c: c.api.remove_container(self.container_id, force=True)
                )
                removed.append(f"container {self.container_id[:12]}")
            except EngineNotFoundError:
                pass
            try:
                await self._engine.call("remove volume", lambda c: c.api.remove_volume(self.volume, force=True))
                removed.append(f"volume {self.volume}")
            except EngineNotFoundError:
                pass
            except EngineError:
                # The engine may still hold the volume for a moment after the container goes.
                await anyio.sleep(0.2)
                await self._engine.call("remove volume", lambda c: c.api.remove_volume(self.volume, force=True))
                removed.append(f"volume {self.volume}")
            if egress_error is not None:
                raise egress_error
            if gate_error is not None:
                raise gate_error
        self._closed = True
        return removed
