"""`bottle-mcp logs JOB [-f]`: a job's output for the person at the terminal.

Works on the jobs of a running server and of kept bottles alike: the job is found in the
user's records (keep.py), and its files are read in the bottle by the same poll the server
uses, from byte offsets, so following costs one short command a second. Output is made safe
for a terminal (control characters shown as \\xNN) before it is printed.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from .backends.base import Bottle
from .jobs import JOBS_ROOT, POLL_SH, _sh, parse_poll
from .keep import JobRecord
from .output import complete_utf8, safe_text

CHUNK = 1 << 20
FOLLOW_S = 1.0


async def show_job(
    bottle: Bottle, job: JobRecord, *, follow: bool, out: Callable[[str], None], err: Callable[[str], None]
) -> str:
    """Print the job's stdout and stderr (following them with `follow`); return its final or current state."""
    offsets = [0, 0]
    while True:
        res = await bottle.exec(
            _sh(POLL_SH, str(JOBS_ROOT / job.job_id), job.pid, offsets[0], offsets[1], CHUNK, 0),
            timeout_s=60,
            workdir=None,
            output_cap=3 * CHUNK + 65536,
        )
        poll = parse_poll(res.stdout)
        running = poll.state == "running"
        more = False
        for i, (data, write) in enumerate(((poll.out, out), (poll.err, err))):
            keep = complete_utf8(data) if running else len(data)
            if keep:
                write(safe_text(data[:keep])[0])
            offsets[i] += keep
            total = poll.sizes["stdout" if i == 0 else "stderr"][0]
            more = more or offsets[i] < total
        if more:
            continue
        if poll.state == "exit":
            code = poll.exit_code
            return f"exited {code}" if code is not None else "killed"
        if poll.timed_out:
            return "timed out"
        if not running:
            return poll.state
        if not follow:
            return "running"
        await anyio.sleep(FOLLOW_S)
