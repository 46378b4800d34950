"""The in-bottle end of the exec channel: one process that runs many commands.

The server starts this once per bottle (`python3 -I -S -c <this file>`) as the
bottle's user, over a single engine exec whose stdin and stdout carry the
channel, so a bottle without a network stays without one. Each command runs
under `/bin/sh -c` in a session of its own; its stdout, stderr and exit status
come back as frames, and a kill request ends its whole session.

Frames, both ways: a 9-byte header (type: u8, request id: u32, payload
length: u32, big-endian) and the payload. Server to bottle: OPEN (JSON: cmd,
cwd, env, stdin, cap, keep), STDIN (bytes; empty = end of input), KILL. Bottle to
server: HELLO (JSON), STARTED (JSON: pid), STDOUT, STDERR, CREDIT (u32: stdin
bytes consumed), EXIT (JSON: code, out, err). The server trusts none of it
beyond this bottle: it bounds, validates and times everything itself.

With `keep` ({dir, bytes, head, tail, runs}), the command's output is also written to
DIR/stdout and DIR/stderr (their first `bytes`; the last `tail` bytes of a longer stream go to
FILE.tail), only the first `head` bytes of each stream are streamed, and at the end the last
`tail` bytes not yet sent follow: the server gets the head and the tail, and the whole stays in
the bottle. The newest `runs` folders beside DIR are kept, older ones removed.

Standard library only: the bottle's image needs nothing but python3.

Its first act is to make itself not dumpable: the kernel (and gVisor) then
closes its /proc entries (fd, mem, environ) to the bottle's own user and refuses
ptrace, so no other process in the bottle can reopen its standard input or
output to read the server's requests or answer in its place. The hello says
whether that worked; the server uses no channel whose supervisor is exposed.

gVisor keeps a non-dumpable process's memory and ptrace closed but not its
/proc/PID/fd, so every frame is also sealed: the server's first frame (KEY,
sent at launch, before anything of the agent runs) carries a random key, and
each frame after it, both ways, ends with a 16-byte HMAC-SHA256 tag over its
direction, its sequence number, header and payload. Bytes that something else
in the bottle writes into the channel, or frames it takes out of it, break the
sequence: the side that notices ends the channel. The server's requests (OPEN)
are also enciphered (XOR with a SHAKE-256 stream keyed by the key and the
sequence number), so one taken out of the channel reads as noise; input data
(STDIN) is sealed but not enciphered: it is going into the bottle anyway.
"""

from __future__ import annotations


def _seal() -> bool:
    """prctl(PR_SET_DUMPABLE, 0); True when the process is no longer dumpable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
        return int(libc.prctl(3, 0, 0, 0, 0)) == 0  # PR_GET_DUMPABLE
    except (ImportError, OSError, AttributeError):
        return False


SEALED = _seal()

import contextlib  # noqa: E402 - after the seal, which comes first
import errno  # noqa: E402
import fcntl  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import IO, Any  # noqa: E402

VERSION = 1
HEADER = struct.Struct(">BII")
T_OPEN, T_STDIN, T_KILL, T_KEY = 1, 2, 3, 4
TAG = 16
KEY_SIZE = 32
T_HELLO, T_STARTED, T_STDOUT, T_STDERR, T_EXIT, T_CREDIT = 10, 11, 12, 13, 14, 15
MAX_IN_FRAME = 8 << 20
F_SETPIPE_SZ = 1031
CHUNK = 1 << 16
IN_CHUNK = 1 << 20
# After a command exits, its output pipes may still be held by something it left
# running in the background; wait this long for them to close, then report.
DRAIN_S = 0.1
# At the process limit: tries to start a command (with short waits), the sessions of ended
# commands remembered, and the most stop-and-scan rounds spent on one session.
SPAWN_TRIES = 3
MAX_ENDED = 256
KILL_ROUNDS = 50
NEAR_LIMIT = 0.8  # of the process limit: past it, leftovers of ended commands are ended
LEFTOVER_SHARE = 0.25  # ... and so they are when they alone hold this much of it
REAP_WAIT_S = 2.0


# Folder of kept outputs -> the runs in it, oldest first (scanned once, then kept up to date here).
_RUNS: dict[str, list[str]] = {}


class Keeper:
    """A command's output kept in files in the bottle, and the last bytes of each stream."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.dir = str(spec["dir"])
        self.limit = max(0, int(spec["bytes"]))
        self.head = max(0, int(spec["head"]))
        self.tail = max(0, int(spec["tail"]))
        self.files: dict[int, IO[bytes] | None] = {T_STDOUT: None, T_STDERR: None}
        self.written = {T_STDOUT: 0, T_STDERR: 0}
        self.last = {T_STDOUT: bytearray(), T_STDERR: bytearray()}
        try:
            parent = os.path.dirname(self.dir)
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.mkdir(self.dir, 0o700)
            # Held open while the command runs; closed in close().
            out = open(self.dir + "/stdout", "wb")  # noqa: SIM115
            err = open(self.dir + "/stderr", "wb")  # noqa: SIM115
            self.files = {T_STDOUT: out, T_STDERR: err}
            runs = _RUNS.get(parent)
            if runs is None:  # the first command here: what earlier supervisors kept, oldest first
                found = sorted(os.scandir(parent), key=lambda e: e.stat().st_mtime)
                runs = _RUNS[parent] = [e.path for e in found if e.path != self.dir]
            runs.append(self.dir)
            while len(runs) > max(1, int(spec.get("runs", 8))):
                shutil.rmtree(runs.pop(0), ignore_errors=True)
        except OSError:
            self.close()

    def add(self, kind: int, data: bytes) -> None:
        f = self.files[kind]
        room = self.limit - self.written[kind]
        if f is not None and room > 0:
            try:
                f.write(data[:room])
                self.written[kind] += min(room, len(data))
            except OSError:  # the tmpfs is full: keep what is there
                self.files[kind] = None
        last = self.last[kind]
        last += data
        if len(last) > self.tail:
            del last[: len(last) - self.tail]

    def close(self, totals: dict[int, int] | None = None) -> None:
        for kind, f in self.files.items():
            if f is None:
                continue
            with contextlib.suppress(OSError):
                f.close()
                if totals is not None and totals[kind] > self.written[kind]:
                    name = "stdout" if kind == T_STDOUT else "stderr"
                    with open(f"{self.dir}/{name}.tail", "wb") as t:
                        t.write(self.last[kind])
        self.files = {T_STDOUT: None, T_STDERR: None}


class Command:
    def __init__(self, rid: int, proc: subprocess.Popen[bytes], cap: int, keeper: Keeper | None = None) -> None:
        self.rid = rid
        self.proc = proc
        self.cap = cap
        self.keeper = keeper
        self.sent = {T_STDOUT: 0, T_STDERR: 0}
        self.total = {T_STDOUT: 0, T_STDERR: 0}
        self.open_pipes = 0
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.code: int | None = None
        self.exited_at: float | None = None


class Supervisor:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.cmds: dict[int, Command] = {}
        # Sessions of commands that have ended, newest last: what they left running is ended
        # when the bottle reaches its process limit (see spawn).
        self.ended: list[int] = []
        self.inbuf = bytearray()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(0, selectors.EVENT_READ, ("in", None))
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.running = True
        self.key = b""
        self.seq_in = self.seq_out = 0

    def tag(self, direction: bytes, seq: int, frame: bytes) -> bytes:
        return hmac.new(self.key, direction + seq.to_bytes(8, "big") + frame, hashlib.sha256).digest()[:TAG]

    def read_key(self) -> None:
        want = HEADER.size + KEY_SIZE
        first = b""
        while len(first) < want:
            data = os.read(0, want - len(first))
            if not data:
                sys.exit("the channel ended before its key")
            first += data
        kind, _, size = HEADER.unpack_from(first)
        if kind != T_KEY or size != KEY_SIZE:
            sys.exit("the channel did not start with its key")
        self.key = first[HEADER.size :]

    def send(self, kind: int, rid: int, payload: bytes = b"") -> None:
        frame = HEADER.pack(kind, rid, len(payload)) + payload
        data = memoryview(frame + self.tag(b"S", self.seq_out, frame))
        self.seq_out += 1
        while data:
            data = data[os.write(1, data) :]

    def send_json(self, kind: int, rid: int, obj: dict[str, Any]) -> None:
        self.send(kind, rid, json.dumps(obj).encode())

    # -- requests from the server -------------------------------------------------

    def on_input(self) -> None:
        data = os.read(0, IN_CHUNK)
        if not data:
            self.running = False
            return
        self.inbuf += data
        while len(self.inbuf) >= HEADER.size:
            kind, rid, size = HEADER.unpack_from(self.inbuf)
            if size > MAX_IN_FRAME:
                sys.exit("frame too large")
            if len(self.inbuf) < HEADER.size + size + TAG:
                return
            frame = bytes(self.inbuf[: HEADER.size + size])
            tag = bytes(self.inbuf[HEADER.size + size : HEADER.size + size + TAG])
            del self.inbuf[: HEADER.size + size + TAG]
            if not hmac.compare_digest(tag, self.tag(b"C", self.seq_in, frame)):
                # Something else in the bottle wrote into the channel or took frames out of it.
                self.running = False
                return
            payload = frame[HEADER.size :]
            if kind == T_OPEN:
                payload = unmask(self.key, self.seq_in, payload)
            self.seq_in += 1
            self.on_frame(kind, rid, payload)

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == T_OPEN:
            self.open(rid, json.loads(payload))
            return
        cmd = self.cmds.get(rid)
        if cmd is None:
            return
        if kind == T_STDIN:
            if payload:
                cmd.stdin_buf += payload
            else:
                cmd.stdin_eof = True
            self.pump_stdin(cmd)
        elif kind == T_KILL:
            kill_session(cmd.proc.pid)

    def open(self, rid: int, req: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        # Near the process limit (a fork bomb left by an earlier command, or leftovers piling up),
        # what earlier, finished commands left running is ended first, so this one can work.
        reclaimed = self.reclaim() if self.ended and crowded(set(self.ended)) else 0
        try:
            try:
                proc = spawn(req, env)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENOMEM) or not self.ended:
                    raise
                reclaimed += self.reclaim()
                proc = spawn(req, env)
        except OSError as e:
            self.send_json(T_STARTED, rid, {"pid": 0})
            msg = f"bottle-mcp: cannot start the command in {req.get('cwd')!r}: {e.strerror}\n".encode()
            self.send(T_STDERR, rid, msg)
            self.send_json(T_EXIT, rid, {"code": 126, "out": 0, "err": len(msg)})
            return
        keeper = Keeper(req["keep"]) if isinstance(req.get("keep"), dict) else None
        cap = keeper.head if keeper is not None else max(0, int(req.get("cap", 0)))
        cmd = Command(rid, proc, cap, keeper)
        self.cmds[rid] = cmd
        self.send_json(T_STARTED, rid, {"pid": proc.pid})
        if reclaimed:
            note = (
                f"bottle-mcp: the bottle was at its process limit; {reclaimed} process(es) left running by "
                "earlier commands were ended\n"
            ).encode()
            self.send(T_STDERR, rid, note)
        for pipe, kind in ((proc.stdout, T_STDOUT), (proc.stderr, T_STDERR)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self.sel.register(pipe.fileno(), selectors.EVENT_READ, ("out", (cmd, kind, pipe)))
            cmd.open_pipes += 1
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            with contextlib.suppress(OSError):  # a larger pipe means fewer wake-ups for big inputs
                fcntl.fcntl(proc.stdin.fileno(), F_SETPIPE_SZ, 1 << 20)

    def pump_stdin(self, cmd: Command) -> None:
        pipe = cmd.proc.stdin
        if pipe is None or pipe.closed:
            if cmd.stdin_buf:
                self.send(T_CREDIT, cmd.rid, struct.pack(">I", len(cmd.stdin_buf)))
                cmd.stdin_buf.clear()
            return
        fd = pipe.fileno()
        written = 0
        while cmd.stdin_buf:
            try:
                n = os.write(fd, cmd.stdin_buf[:IN_CHUNK])
            except BlockingIOError:
                break
            except OSError:  # the command closed its input: drop the rest
                n = len(cmd.stdin_buf)
                cmd.stdin_eof = True
            written += n
            del cmd.stdin_buf[:n]
        if written:
            self.send(T_CREDIT, cmd.rid, struct.pack(">I", written))
        registered = fd in self.sel.get_map()
        if cmd.stdin_buf and not registered:
            self.sel.register(fd, selectors.EVENT_WRITE, ("stdin", (cmd, 0)))
        elif not cmd.stdin_buf:
            if registered:
                self.sel.unregister(fd)
            if cmd.stdin_eof:
                with contextlib.suppress(OSError):
                    pipe.close()

    # -- the commands' side -----------------------------------------------------

    def on_output(self, pipe: IO[bytes], cmd: Command, kind: int) -> None:
        try:
            data = os.read(pipe.fileno(), CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close_pipe(pipe, cmd)
            return
        cmd.total[kind] += len(data)
        if cmd.keeper is not None:
            cmd.keeper.add(kind, data)
        room = cmd.cap - cmd.sent[kind]
        if room > 0:
            part = data[:room]
            cmd.sent[kind] += len(part)
            self.send(kind, cmd.rid, part)

    def close_pipe(self, pipe: IO[bytes], cmd: Command) -> None:
        # Close through the file object only: closing the bare fd would let a later
        # close of the object hit whatever reused that number (another command's pipe).
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(pipe.fileno())
        pipe.close()
        cmd.open_pipes -= 1

    def reap(self) -> None:
        now = time.monotonic()
        for cmd in list(self.cmds.values()):
            if cmd.code is None:
                code = cmd.proc.poll()
                if code is None:
                    continue
                cmd.code = 128 - code if code < 0 else code
                cmd.exited_at = now
            drained = cmd.open_pipes == 0
            if drained or (cmd.exited_at is not None and now - cmd.exited_at >= DRAIN_S):
                self.finish(cmd)

    def reclaim(self) -> int:
        """End everything that finished commands left running; how many processes that was."""
        ended, self.ended = self.ended, []
        return sum(kill_session(pid) for pid in ended)

    def finish(self, cmd: Command) -> None:
        for f in (cmd.proc.stdout, cmd.proc.stderr, cmd.proc.stdin):
            if f is not None and not f.closed:
                fd = f.fileno()
                if fd in self.sel.get_map():
                    self.sel.unregister(fd)
                with contextlib.suppress(OSError):
                    f.close()
        del self.cmds[cmd.rid]
        self.ended = [*self.ended[-(MAX_ENDED - 1) :], cmd.proc.pid]
        if cmd.keeper is not None:
            cmd.keeper.close(cmd.total)
            for kind in (T_STDOUT, T_STDERR):  # the tail not sent yet
                unsent = cmd.total[kind] - cmd.sent[kind]
                last = cmd.keeper.last[kind]
                if unsent > 0 and last:
                    self.send(kind, cmd.rid, bytes(last[-min(unsent, len(last)) :]))
        self.send_json(T_EXIT, cmd.rid, {"code": cmd.code, "out": cmd.total[T_STDOUT], "err": cmd.total[T_STDERR]})

    # -- main loop ------------------------------------------------------------------

    def run(self) -> None:
        self.read_key()
        self.send_json(T_HELLO, 0, {"v": VERSION, "pid": os.getpid(), "sealed": SEALED})
        while self.running:
            waiting = [c.exited_at for c in self.cmds.values() if c.exited_at is not None]
            timeout = max(0.0, min(waiting) + DRAIN_S - time.monotonic()) if waiting else None
            for key, _ in self.sel.select(timeout):
                role, extra = key.data
                if role == "in":
                    self.on_input()
                elif role == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                elif role == "out":
                    cmd, kind, pipe = extra
                    self.on_output(pipe, cmd, kind)
                elif role == "stdin":
                    self.pump_stdin(extra[0])
            self.reap()
        for cmd in list(self.cmds.values()):
            kill_session(cmd.proc.pid)


def unmask(key: bytes, seq: int, data: bytes) -> bytes:
    """XOR with the server's key stream for this frame (the same function enciphers and deciphers)."""
    if not data:
        return data
    stream = hashlib.shake_256(key + b"E" + seq.to_bytes(8, "big")).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


@functools.cache
def process_limit() -> int | None:
    """The most processes this bottle may hold: its RLIMIT_NPROC (gVisor) or pids cgroup (runc).

    Read once: the engine sets both when it creates the bottle, and nothing in it may change them."""
    limits = []
    soft, _hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            limits.append(int(f.read().strip()))
    return min(limits) if limits else None


def crowded(ended: set[int]) -> bool:
    """Whether the bottle is near its process limit, or ended commands' leftovers hold much of it."""
    limit = process_limit()
    if limit is None:
        return False
    # Asked before every command: a count of /proc's entries settles it unless the bottle is
    # crowded enough that ended commands' leftovers could hold their share (the stats are read then).
    if sum(1 for entry in os.listdir("/proc") if entry.isdigit()) < limit * min(NEAR_LIMIT, LEFTOVER_SHARE):
        return False
    table = _processes()
    leftovers = sum(1 for _ppid, _pgrp, sid in table.values() if sid in ended)
    return len(table) >= limit * NEAR_LIMIT or leftovers >= limit * LEFTOVER_SHARE


def spawn(req: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one command under /bin/sh in a session of its own."""
    last: OSError | None = None
    for attempt in range(SPAWN_TRIES):
        try:
            return subprocess.Popen(
                ["/bin/sh", "-c", str(req["cmd"])],
                stdin=subprocess.PIPE if req.get("stdin") else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=req.get("cwd") or None,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOMEM):
                raise
            last = e
            time.sleep(0.05 * (attempt + 1))  # processes that are dying free their slots
    assert last is not None
    raise last


def kill_session(pid: int) -> int:
    """SIGKILL everything the command started: its process group, its session and its descendants.

    Members are stopped first, in rounds, so that nothing forks away between the scan and the kill;
    rounds go on while new members appear (a fork bomb keeps adding them). Returns how many.
    """
    if pid <= 1:
        return 0
    me = os.getpid()
    doomed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        table = _processes()
        found = {p for p, (_, pgrp, sid) in table.items() if pid in (p, pgrp, sid)}
        grew = True
        while grew:  # descendants, whatever session they moved to
            grew = False
            for p, (ppid, _, _) in table.items():
                if p not in found and (ppid in found or ppid in doomed):
                    found.add(p)
                    grew = True
        found -= {me, 1}
        new = found - doomed
        if not new:
            break
        for p in new:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGSTOP)
        doomed |= new
    for p in doomed:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    # Until init has reaped them they still count against the bottle's process limit: wait a
    # little, so that the next command can start what it needs.
    deadline = time.monotonic() + REAP_WAIT_S
    while doomed and time.monotonic() < deadline:
        doomed = {p for p in doomed if os.path.exists(f"/proc/{p}")}
        if doomed:
            time.sleep(0.02)
    return len(doomed)


def _processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, process group, session) of every process this user can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3:
            table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


if __name__ == "__main__":
    Supervisor().run()
