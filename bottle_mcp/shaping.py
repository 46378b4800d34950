"""Results shaped for the context of the model that reads them.

Agent hosts pass a tool result to the model whole only while it is small: Claude Code keeps up
to about 50,000 characters, saves anything bigger to a file and shows the model a 2 KB preview
(or only an error past 25,000 tokens). So every result here stays under RESULT_CHAR_LIMIT
characters as JSON, its status fields come first and the bulky text last (a preview still shows
the facts), and big output is cut in the middle, keeping its head and its tail, with a marker
that says how much was cut and where all of it is kept in the bottle.

Foreground `exec` (and `diff`) output is written to files in the bottle, under EXEC_ROOT (a
folder of the bottle's /tmp tmpfs, so bounded by its size): the newest KEEP_RUNS runs are kept,
each stream up to KEEP_BYTES plus its last bytes. The fast way is the bottle's exec channel: its
supervisor keeps the files as the output streams and sends only the head and the tail (see
data/supervisor.py, `keep`), at no extra process in the bottle. Without a channel a shell
wrapper does the same with fifos, `head -c`, `dd` and `tail`, then prints the head and the tail
base64-encoded behind a per-call nonce, so that the command's own output can never be mistaken
for the wrapper's report (about 20 processes: slow under gVisor, but only a fallback).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeVar

from pydantic import BaseModel

from .backends.base import Bottle
from .errors import BottleError
from .models import CleanupReport, ExecResult
from .output import safe_text, trim_partial_utf8
from .textfit import fit, json_chars

RESULT_CHAR_LIMIT = 40_000  # what a result may reach as JSON text (hosts pass ~50,000 whole)
TEXT_BUDGET = 33_000  # characters of output text in one result, all streams together
EXEC_ROOT = PurePosixPath("/tmp/bottle-mcp-exec")
KEEP_BYTES = 4 * 1024**2  # of each stream of one exec, kept in the bottle (its tail is kept too)
KEEP_RUNS = 8  # newest exec outputs kept in the bottle
READ_TIMEOUT_S = 30.0
PAGE_BUDGET = 30_000  # characters of list items in one page

T = TypeVar("T", bound=BaseModel)


def prefix_within(data: bytes, budget: int) -> int:
    """Bytes of `data` from its start whose safe text takes at most `budget` JSON characters."""
    if json_chars(safe_text(data)[0]) <= budget:
        return len(data)
    lo, hi = 0, min(len(data), budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if json_chars(safe_text(trim_partial_utf8(data[:mid]))[0]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return len(trim_partial_utf8(data[:lo]))


# -- pages of list items ----------------------------------------------------------------------


def parse_cursor(cursor: str | None, total: int, default: int = 0) -> int:
    """A page cursor: the index of the first item, as a decimal string this server handed out."""
    if cursor is None or cursor == "":
        return max(0, min(default, total))
    if not re.fullmatch(r"[0-9]{1,9}", cursor):
        raise BottleError(
            f"cursor {cursor[:40]!r} is not one this server issued; pass next_cursor from the previous call, "
            "or leave it out to start at the beginning"
        )
    return min(int(cursor), total)


def page(items: Sequence[T], start: int, limit: int, budget: int = PAGE_BUDGET) -> tuple[list[T], str | None]:
    """Items from `start`, at most `limit` of them and at most `budget` characters; and the next cursor."""
    out: list[T] = []
    used = 0
    for item in items[start : start + limit]:
        cost = len(item.model_dump_json()) + 1
        if out and used + cost > budget:
            break
        out.append(item)
        used += cost
    end = start + len(out)
    return out, (str(end) if end < len(items) else None)


def shape_cleanup(report: CleanupReport) -> CleanupReport:
    """A cleanup report whose lists fit a result: counts in `summary`, the first items of each list."""
    verb = "would remove" if report.dry_run else "removed"
    summary = f"{verb} {len(report.removed)}, kept {len(report.kept)}, failed {len(report.failed)}"
    removed, _ = page(report.removed, 0, 200, PAGE_BUDGET // 3)
    kept, _ = page(report.kept, 0, 200, PAGE_BUDGET // 3)
    failed, _ = page(report.failed, 0, 200, PAGE_BUDGET // 3)
    if (len(removed), len(kept), len(failed)) != (len(report.removed), len(report.kept), len(report.failed)):
        summary += (
            f"; listed here: the first {len(removed)} removed, {len(kept)} kept and {len(failed)} failed "
            "(`bottle-mcp cleanup --dry-run` lists all)"
        )
    return report.model_copy(update={"summary": summary, "removed": removed, "kept": kept, "failed": failed})


# -- exec output kept in the bottle -------------------------------------------------------------

# $1 nonce, $2 run folder, $3 bytes kept per stream, $4 head bytes, $5 tail bytes, $6 the command.
# Each stream goes through a fifo to `save`: the first $3 bytes to a file (unbuffered, so a killed
# command loses nothing it wrote), the rest counted by dd and its last $5 bytes kept, so a flood
# neither fills the tmpfs nor blocks the command.
SAVE_SH = r"""n=$1; d=$2; keep=$3; h=$4; t=$5
root=${d%/*}
if ! mkdir -p -m 700 "$root" 2>/dev/null || ! mkdir -m 700 "$d" 2>/dev/null || ! mkfifo "$d/o" "$d/e" 2>/dev/null; then
  echo "$n nosave"
  exec /bin/sh -c "$6" </dev/null
fi
ls -1t "$root" 2>/dev/null | tail -n +KEEP_NEXT | while read -r old; do rm -rf -- "${root:?}/$old"; done
unbuf=; command -v stdbuf >/dev/null 2>&1 && unbuf="stdbuf -o0"
save() {
  { $unbuf head -c "$keep" > "$1"
    LC_ALL=C dd bs=65536 2> "$1.dd" | tail -c "$t" > "$1.tail"; } < "$2"
}
save "$d/stdout" "$d/o" &
save "$d/stderr" "$d/e" &
/bin/sh -c "$6" > "$d/o" 2> "$d/e" </dev/null
rc=$?
wait
rm -f "$d/o" "$d/e"
REPORT
"""

# $1 nonce, $2 run folder, $3 head bytes, $4 tail bytes, $5 exit status (or '-'). Prints the report.
REPORT_SH = r"""size() { k=$(stat -c %s -- "$1" 2>/dev/null) || k=0
  r=$(sed -n 's/^\([0-9][0-9]*\) bytes.*/\1/p' "$1.dd" 2>/dev/null | head -n 1); echo "${k:-0} ${r:-0}"; }
emit() { if [ $(($2 + $3)) -le $((h + t)) ]; then cat -- "$1"; cat -- "$1.tail" 2>/dev/null
  else head -c "$h" -- "$1"; if [ "$3" -ge "$t" ]; then cat -- "$1.tail"
  else tail -c $((t - $3)) -- "$1"; cat -- "$1.tail" 2>/dev/null; fi; fi; }
so=$(size "$d/stdout"); se=$(size "$d/stderr")
echo "$n $rc $so $se"
printf 'out '; emit "$d/stdout" $so | base64 -w0; echo
printf 'err '; emit "$d/stderr" $se | base64 -w0; echo
"""

READ_SH = "n=$1; d=$2; h=$3; t=$4; rc=$5\n" + REPORT_SH


def _save_script() -> str:
    return SAVE_SH.replace("KEEP_NEXT", str(KEEP_RUNS + 1)).replace("REPORT\n", REPORT_SH)


def _sh(script: str, *args: str | int) -> str:
    return f"/bin/sh -c {shlex.quote(script)} bottle-exec " + " ".join(shlex.quote(str(a)) for a in args)


@dataclass(frozen=True)
class SavedStream:
    kept: int  # bytes in the file
    rest: int  # bytes beyond it, counted (their tail is in FILE.tail)
    data: bytes  # all of it (when small) or its head + tail
    path: str

    @property
    def total(self) -> int:
        return self.kept + self.rest


@dataclass(frozen=True)
class SavedReport:
    exit_code: int | None
    stdout: SavedStream
    stderr: SavedStream


_HEADER = re.compile(r"^([0-9a-f]{16}) ([0-9]{1,3}|-) ([0-9]{1,15}) ([0-9]{1,15}) ([0-9]{1,15}) ([0-9]{1,15})$")


def parse_report(text: str, nonce: str, run_dir: PurePosixPath) -> SavedReport | None:
    """The wrapper's report, or None when the text holds none (the run was killed before it)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m is None or m.group(1) != nonce:
            continue
        if len(lines) < i + 3 or not lines[i + 1].startswith("out ") or not lines[i + 2].startswith("err "):
            raise BottleError("the bottle's exec report was cut short; the output files may be damaged")
        try:
            out = base64.b64decode(lines[i + 1][4:], validate=True)
            err = base64.b64decode(lines[i + 2][4:], validate=True)
        except (binascii.Error, ValueError):
            raise BottleError("the bottle's exec report is malformed") from None
        code = None if m.group(2) == "-" else int(m.group(2))
        k1, r1, k2, r2 = (int(m.group(g)) for g in range(3, 7))
        return SavedReport(
            exit_code=code,
            stdout=SavedStream(kept=k1, rest=r1, data=out, path=str(run_dir / "stdout")),
            stderr=SavedStream(kept=k2, rest=r2, data=err, path=str(run_dir / "stderr")),
        )
    return None


def _leading_partial_utf8(data: bytes) -> bytes:
    """Drop continuation bytes a cut left at the start."""
    i = 0
    while i < min(3, len(data)) and data[i] & 0xC0 == 0x80:
        i += 1
    return data[i:]


def render_stream(name: str, s: SavedStream, head: int, tail: int, budget: int) -> tuple[str, list[str], bool]:
    """The text a model sees of one stream, notes about it, and whether it was cut."""
    if s.total <= head + tail:
        text, notes = safe_text(s.data)
        if json_chars(text) <= budget:
            return text, notes, False
        h_bytes, t_bytes = s.data, s.data  # short, but escaped characters made it too long
    else:
        h_bytes, t_bytes = s.data[:head], s.data[head:]
    h, n1 = safe_text(trim_partial_utf8(h_bytes))
    t, n2 = safe_text(_leading_partial_utf8(t_bytes))
    where = f"all of it is in {s.path} in the bottle"
    if s.rest:
        where = f"the first {s.kept:,} bytes are in {s.path} and the last {tail:,} in {s.path}.tail in the bottle"
    marker = f"\n[... {name} cut here: {s.total:,} bytes in all; {where} ...]\n"
    return fit(h, t, marker, budget), sorted(set(n1 + n2)), True


async def run_saved(
    bottle: Bottle, command: str, *, timeout_s: float, workdir: str | None, cap: int, budget: int | None = None
) -> ExecResult:
    """exec `command` with its whole output kept in the bottle; return a result with head and tail only."""
    nonce = secrets.token_hex(8)
    run_dir = EXEC_ROOT / f"x-{secrets.token_hex(6)}"
    head = cap // 2
    tail = cap - head
    keep = max(KEEP_BYTES, cap)
    started = time.monotonic()
    kept = getattr(bottle, "exec_kept", None)
    if kept is not None:  # the fast way: the bottle's exec channel keeps the output as it streams
        spec = {"dir": str(run_dir), "bytes": keep, "head": head, "tail": tail, "runs": KEEP_RUNS}
        got = await kept(command, timeout_s=timeout_s, workdir=workdir, keep=spec, wire_cap=head + tail)
        if got is not None:
            outcome, notes = got
            streams = []
            for name, data, total in (
                ("stdout", bytes(outcome.stdout), outcome.stdout_bytes),
                ("stderr", bytes(outcome.stderr), outcome.stderr_bytes),
            ):
                streams.append(
                    SavedStream(kept=min(total, keep), rest=max(0, total - keep), data=data, path=str(run_dir / name))
                )
            fast = SavedReport(exit_code=outcome.exit_code, stdout=streams[0], stderr=streams[1])
            return _result(fast, cap, head, tail, budget, run_dir, outcome.timed_out, started, notes)
    wire = (head + tail) * 4 // 3 + 4096
    res = await bottle.exec(
        _sh(_save_script(), nonce, str(run_dir), keep, head, tail, command),
        timeout_s=timeout_s,
        workdir=workdir,
        output_cap=wire,
    )
    if res.stdout.startswith(f"{nonce} nosave\n"):
        return res.model_copy(
            update={
                "stdout": res.stdout[len(nonce) + 8 :],
                "notes": [*res.notes, "the output could not be kept in the bottle (no writable /tmp there)"],
            }
        )
    report = parse_report(res.stdout, nonce, run_dir)
    notes = [n for n in res.notes if not n.startswith("output was cut")]
    if report is None:
        # Killed before it reported (a timeout): read what the files hold.
        read = await bottle.exec(
            _sh(READ_SH, nonce, str(run_dir), head, tail, "-"),
            timeout_s=READ_TIMEOUT_S,
            workdir=None,
            output_cap=wire,
        )
        report = parse_report(read.stdout, nonce, run_dir)
        if report is None:
            return res.model_copy(update={"notes": [*notes, "the command's output could not be read back"]})
    return _result(report, cap, head, tail, budget, run_dir, res.timed_out, started, notes, exit_code=res.exit_code)


def _result(
    report: SavedReport,
    cap: int,
    head: int,
    tail: int,
    budget: int | None,
    run_dir: PurePosixPath,
    timed_out: bool,
    started: float,
    notes: list[str],
    *,
    exit_code: int | None = None,
) -> ExecResult:
    # The streams share one budget of characters (escapes count): one that needs less leaves room to the other.
    total = max(TEXT_BUDGET, 2 * cap) if budget is None else budget
    out, n1, cut1 = render_stream("stdout", report.stdout, head, tail, total // 2)
    err, n2, cut2 = render_stream("stderr", report.stderr, head, tail, total // 2)
    if cut1 and not cut2:
        out, n1, cut1 = render_stream("stdout", report.stdout, head, tail, total - json_chars(err))
    elif cut2 and not cut1:
        err, n2, cut2 = render_stream("stderr", report.stderr, head, tail, total - json_chars(out))
    if cut1 or cut2:
        notes.insert(
            0,
            f"output over the cap of {cap:,} bytes per stream was cut in the middle (head and tail kept); "
            f"the whole of it is kept in the bottle under {run_dir}/ (read parts with exec, e.g. "
            f"`sed -n 100,200p {run_dir}/stdout`, or copy it with cp_out)",
        )
    notes += [n for n in sorted(set(n1 + n2)) if n not in notes]
    return ExecResult(
        exit_code=exit_code if timed_out else report.exit_code,
        timed_out=timed_out,
        truncated=cut1 or cut2,
        stdout_bytes=report.stdout.total,
        stderr_bytes=report.stderr.total,
        output_cap_bytes=cap,
        duration_ms=int((time.monotonic() - started) * 1000),
        stdout_path=report.stdout.path,
        stderr_path=report.stderr.path,
        notes=notes,
        stdout=out,
        stderr=err,
    )
