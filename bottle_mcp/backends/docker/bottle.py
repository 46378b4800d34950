"""A running Docker bottle: exec, copy-in and removal.

Commands go over the bottle's exec channel (`channel.py`) when it runs, else
one engine exec each (`execstream.py`): same results, same guarantees.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable
from functools import partial
from pathlib import PurePosixPath
from typing import IO, TypeVar

import anyio

from ...errors import (
    BottleGoneError,
    CopyError,
    EngineError,
    EngineNotFoundError,
    EngineUnreachableError,
    PathError,
)
from ...logsafe import bottle_text
from ...models import BottleInfo, EgressRecords, ExecResult, GateRecords
from ...output import safe_text, trim_partial_utf8
from . import disk
from .channel import Channel, ChannelError
from .egress import EgressStack
from .engine import Engine
from .execstream import ExecOutcome, ExecStream
from .gates import GateStack

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often the launch may try to start the channel before the bottle uses engine execs.
CHANNEL_ATTEMPTS = 3

BIG_TAR = 4 << 20


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
    # --hard-dereference: each hard link comes out as a plain copy of its file, whichever is met first.
    'exec tar -c --hard-dereference -f - -C "$parent" -- "$name"'
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
        env: dict[str, str] | None = None,
    ) -> None:
        self.egress = egress
        self.gate = gate
        self._engine = engine
        self.container_id = container_id
        self.volume = volume
        self._info = info
        self.user = user
        self.env = dict(env or {})  # set per command (a pooled container was created before its agent was known)
        self._closed = False
        self._channel: Channel | None = None
        self._channel_attempts = 0
        self._channel_lock = anyio.Lock()
        self.channel_notes: list[str] = []
        self._channel_lost: str | None = None  # why the channel ended; the bottle then uses engine execs
        self._loss_reported = False

    @property
    def channel_alive(self) -> bool:
        return self._channel is not None and self._channel.alive

    async def start_channel(self, *, wait: bool = True) -> bool:
        """Start the exec channel if it is not running; False when the bottle must use engine execs.

        With `wait=False` the supervisor's start-up is not awaited here but by the first command.
        """
        async with self._channel_lock:
            if self.channel_alive:
                return True
            if self._channel_attempts >= CHANNEL_ATTEMPTS or self._closed:
                return False
            self._channel_attempts += 1
            try:
                self._channel = await Channel.open(self._engine, self.container_id, self.id, self.user, wait=wait)
            except EngineUnreachableError as e:
                self._channel_attempts -= 1  # not the channel's fault: try again once the engine is back
                log.info("bottle %s: no exec channel while the engine is unreachable: %s", self.id, e)
                self._channel = None
                return False
            except (ChannelError, EngineError) as e:
                log.info("bottle %s runs without an exec channel for now: %s", self.id, e)
                self._channel = None
                return False
            return True

    def no_channel(self) -> None:
        """Use one engine exec per command from now on."""
        self._channel_attempts = CHANNEL_ATTEMPTS

    def adopt_channel(self, channel: Channel | None) -> None:
        """Take over a channel started before this handle existed (a warm pool's)."""
        if channel is not None and channel.alive:
            self._channel = channel
            self._channel_attempts = 1

    async def _live_channel(self) -> Channel | None:
        """The running channel, or None. A channel that ended is never replaced.

        A new supervisor would be reachable by the bottle's processes (through /proc) for the moment
        between its start and its seal, and once the agent has the bottle something may be waiting
        for exactly that moment. So channels start at launch only; after one ends, every command
        uses an engine exec of its own.
        """
        channel = self._channel
        if channel is not None and not channel.alive and self._channel_lost is None:
            self._channel_lost = channel.dead or "closed"
            self._channel = None  # its supervisor was killed when it ended (Channel.close)
            if not self._loss_reported:
                self.channel_notes.append(
                    f"this bottle's exec channel ended ({bottle_text(self._channel_lost, 200)}); this and later "
                    "commands run through one engine exec each"
                )
        return self._channel if self.channel_alive else None

    async def _run(
        self,
        command: str,
        *,
        timeout_s: float,
        workdir: str | None,
        output_cap: int,
        stdin: IO[bytes] | bytes | None,
        via_engine: bool = False,
    ) -> tuple[ExecOutcome, list[str]]:
        """Run over the channel if possible, else one engine exec. Returns the outcome and notes about it."""
        channel = None if via_engine else await self._live_channel()
        fallback_notes: list[str] = []
        if not via_engine:
            fallback_notes, self.channel_notes = self.channel_notes, []
        if channel is not None:
            try:
                out, broken = await channel.run(
                    command, timeout_s=timeout_s, workdir=workdir, output_cap=output_cap, env=self.env, stdin=stdin
                )
            except ChannelError:
                pass  # nothing was started: use an engine exec
            else:
                notes = fallback_notes
                if out.timed_out:
                    out.exit_code = None  # as with an engine exec: a killed command has no exit code to report
                elif broken:
                    out.exit_code = None
                    self._loss_reported = True
                    notes.append(
                        f"the bottle's exec channel broke during the command ({bottle_text(broken, 200)}; "
                        "something in the bottle ended or stopped it); the command's processes were killed and "
                        "its outcome is unknown; later commands run through one engine exec each"
                    )
                return out, notes
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
            environment=self.env,
        )
        try:
            out = await self._engine.run(stream.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                stream.abort.set()
                await self._engine.run(stream.done.wait, 5.0)
                await self._engine.run(stream.kill)
            raise
        if out.timed_out:
            await self._engine.run(stream.kill)
        return out, fallback_notes

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
        out, extra_notes = await self._run(
            command, timeout_s=timeout_s, workdir=workdir, output_cap=output_cap, stdin=stdin
        )
        if out.exit_code is None and not out.timed_out:
            await self._raise_if_gone()
        stdout, n1 = safe_text(_capped(out.stdout, out.stdout_bytes))
        stderr, n2 = safe_text(_capped(out.stderr, out.stderr_bytes))
        truncated = out.stdout_bytes > len(out.stdout) or out.stderr_bytes > len(out.stderr)
        notes = extra_notes + sorted(set(n1 + n2))
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

    async def exec_kept(
        self, command: str, *, timeout_s: float, workdir: str | None, keep: dict[str, object], wire_cap: int
    ) -> tuple[ExecOutcome, list[str]] | None:
        """Run over the exec channel with the output kept in the bottle (see the supervisor's `keep`).

        None when the bottle has no live channel: the caller keeps the output another way.
        """
        channel = await self._live_channel()
        if channel is None:
            return None
        try:
            out, broken = await channel.run(
                command, timeout_s=timeout_s, workdir=workdir, output_cap=wire_cap, env=self.env, keep=keep
            )
        except ChannelError:
            return None
        notes = []
        if out.timed_out:
            out.exit_code = None
            notes.append(f"timed out after {timeout_s:g} s; the command's process group was killed")
        elif broken:
            out.exit_code = None
            notes.append(
                "the bottle's exec channel broke during the command (something in the bottle ended it); "
                "the command's processes were killed and its outcome is unknown"
            )
        elif out.exit_code is None:
            await self._raise_if_gone()
        return out, notes

    async def put_tar(self, tar: IO[bytes], dest_dir: PurePosixPath, *, via_engine: bool = False) -> None:
        """Unpack `tar` into `dest_dir`; `via_engine` uses its own engine exec even when the channel runs."""
        script = f"set -- {shlex.quote(str(dest_dir))}; {UNPACK}"
        if _size(tar) > BIG_TAR:
            via_engine = True  # measured: a big stream goes faster over an exec of its own than as frames
        out, _ = await self._run(
            script, timeout_s=600, workdir=None, output_cap=64 * 1024, stdin=tar, via_engine=via_engine
        )
        if out.exit_code != 0:
            await self._raise_if_gone()
            detail, _ = safe_text(bytes(out.stderr or out.stdout))
            raise CopyError(
                f"unpacking into {str(dest_dir)!r} failed inside bottle {self.id!r} "
                f"(exit {out.exit_code}): {detail.strip()[:500]}. Pick a folder the bottle's user can write, "
                "such as the workspace."
            )

    async def egress_log(self) -> tuple[list[str], EgressRecords]:
        """The allow-list and the proxy's decisions so far (empty for a bottle without egress)."""
        if self.egress is None:
            return [], EgressRecords([])
        return self.egress.allow, await self.egress.records()

    async def gate_log(self) -> tuple[dict[str, str], dict[str, str], GateRecords]:
        """Git remotes -> upstreams, ssh aliases -> host:port, and the gate's events (empty without a gate)."""
        if self.gate is None:
            return {}, {}, GateRecords([])
        return self.gate.git_remotes, self.gate.ssh_hosts, await self.gate.records()

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
        out = await self._engine.run(stream.run)
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
            raise CopyError(f"packing {str(path)!r} failed inside bottle {self.id!r} (exit {out.exit_code}): {detail}")
        return bytes(out.stdout)

    async def read_tar(self, path: PurePosixPath, consume: Callable[[IO[bytes]], T], *, max_bytes: int) -> T:
        """Stream a tar of `path` made in the bottle into `consume` (run in a worker thread) as it comes.

        At most a pipe's worth of the tar is in this process at any time. Raises PathError as get_tar
        does; `consume` sees a truncated stream when the tar is over `max_bytes` or the bottle fails.
        """
        sink = _PipeSink(max_bytes)
        stream = ExecStream(
            self._engine,
            self.container_id,
            self.id,
            ["/bin/sh", "-c", PACK, "bottle-get", str(path)],
            user=self.user,
            workdir=None,
            timeout_s=600,
            output_cap=64 * 1024,  # stderr only: stdout goes to the sink
            stdout_sink=sink.write,
        )
        result: list[T] = []
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                stream.run()
            finally:
                sink.close()

        def read() -> None:
            with os.fdopen(sink.read_fd, "rb", buffering=1 << 16) as reader:
                try:
                    result.append(consume(reader))
                except Exception as e:
                    failure.append(e)
                    return  # closing the pipe stops the bottle's side
                while reader.read(1 << 16):  # whatever follows the archive's end: let the command finish
                    pass

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(anyio.to_thread.run_sync, produce, abandon_on_cancel=False))
                tg.start_soon(partial(anyio.to_thread.run_sync, read, abandon_on_cancel=False))
        except BaseException:
            stream.abort.set()
            raise
        out = stream.outcome
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
        if failure:
            raise failure[0]
        if out.exit_code != 0 and not out.aborted:
            await self._raise_if_gone()
            raise CopyError(f"packing {str(path)!r} failed inside bottle {self.id!r} (exit {out.exit_code}): {detail}")
        return result[0]

    async def _raise_if_gone(self) -> None:
        try:
            state = await self._engine.call(
                "inspect bottle", lambda c: c.api.inspect_container(self.container_id)["State"]
            )
        except EngineNotFoundError:
            raise BottleGoneError(self.id, "its container no longer exists") from None
        if not state.get("Running"):
            raise BottleGoneError(self.id, f"its container is {state.get('Status', 'stopped')}")

    def detach(self) -> None:
        """Let go of the bottle without removing it (it is kept for a later server): end the exec channel."""
        if self._channel is not None:
            self._channel.close("the server let go of the bottle")
        self._closed = True

    async def aclose(self) -> list[str]:
        if self._closed:
            return []
        removed: list[str] = []
        if self._channel is not None:
            self._channel.close()
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
            if await self._engine.remove_resource("container", self.container_id):
                removed.append(f"container {self.container_id[:12]}")
            # The engine may still hold the volume for a moment after the container goes: retried.
            removed += await disk.remove_volumes(self._engine, self.volume)
            if egress_error is not None:
                raise egress_error
            if gate_error is not None:
                raise gate_error
        self._closed = True
        return removed


class _PipeSink:
    """The write end of a pipe the exec's stdout goes into; refuses (returns False) past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self._max = max_bytes
        self._seen = 0
        self._closed = False

    def write(self, data: bytes) -> bool:
        self._seen += len(data)
        if self._closed or self._seen > self._max:
            return False
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._write_fd, view) :]
        except OSError:  # the reader stopped: stop the command
            return False
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._write_fd)


def _size(f: IO[bytes]) -> int:
    """Bytes left in a seekable stream (0 when it cannot tell)."""
    try:
        here = f.tell()
        end = f.seek(0, 2)
        f.seek(here)
    except (OSError, ValueError):
        return 0
    return end - here
