"""The in-bottle job programs (bottle_mcp/data/inbottle/*.sh), tested as the files they are.

They are POSIX shell over coreutils and util-linux, so they run here on the host as they run in a
bottle: a job folder in a temporary directory, the runner started detached, its status read back by
the poll program and parsed by the server's strict parser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

import pytest

from bottle_mcp import jobs

PROGRAMS = resources.files("bottle_mcp") / "data" / "inbottle"
NAMES = ["run.sh", "kill.sh", "count.sh", "start.sh", "poll.sh"]


def test_the_job_module_runs_exactly_the_shipped_files() -> None:
    shipped = {p.name: p.read_text(encoding="utf-8") for p in PROGRAMS.iterdir() if p.name.endswith(".sh")}
    assert set(shipped) == set(NAMES)
    loaded = {"run.sh": jobs.RUN_SH, "kill.sh": jobs.KILL_SH, "count.sh": jobs.COUNT_SH}
    loaded |= {"start.sh": jobs.START_SH, "poll.sh": jobs.POLL_SH}
    assert loaded == shipped


def test_the_programs_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is missing; scripts/setup.sh installs it")
        pytest.skip("shellcheck is not installed (scripts/setup.sh installs it)")
    files = [str(PROGRAMS / n) for n in NAMES]
    res = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", *files], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout


def _sh(program: str, *args: str | int | Path) -> str:
    res = subprocess.run(
        ["/bin/sh", "-c", program, "bottle-job", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _job(tmp_path: Path, command: str, *, deadline: int = 30, cap: int = 1024) -> tuple[Path, int]:
    """Lay out a job folder as JobManager.start does and start it; return the folder and the runner's pid."""
    d = tmp_path / "j-0123456789"
    d.mkdir()
    (d / "run.sh").write_text(jobs.RUN_SH)
    (d / "kill.sh").write_text(jobs.KILL_SH)
    (d / "command.sh").write_text(command)
    pid = _sh(jobs.START_SH, d, tmp_path, cap, deadline).strip()
    assert pid.isdigit(), pid
    return d, int(pid)


def _poll(d: Path, pid: int, chunk: int = 4096) -> jobs.Poll:
    return jobs.parse_poll(_sh(jobs.POLL_SH, d, pid, 0, 0, chunk, 64))


def _until_done(d: Path, pid: int) -> jobs.Poll:
    for _ in range(200):
        poll = _poll(d, pid)
        if poll.state != "running":
            return poll
        time.sleep(0.05)
    raise AssertionError("the job did not end")


def test_a_job_runs_with_split_streams_and_its_exit_status(tmp_path: Path) -> None:
    d, pid = _job(tmp_path, "pwd; echo to-stderr >&2; exit 3\n")
    poll = _until_done(d, pid)
    assert (poll.state, poll.exit_code, poll.timed_out) == ("exit", 3, False)
    assert poll.out == f"{tmp_path}\n".encode()
    assert poll.err == b"to-stderr\n"


def test_output_past_the_cap_is_counted_not_stored(tmp_path: Path) -> None:
    d, pid = _job(tmp_path, "head -c 5000 /dev/zero\n", cap=1000)
    poll = _until_done(d, pid)
    assert poll.sizes["stdout"] == (1000, 4000)
    assert (d / "stdout").stat().st_size == 1000


def test_a_missing_workdir_is_reported_as_exit_126(tmp_path: Path) -> None:
    d = tmp_path / "j-0000000001"
    d.mkdir()
    (d / "run.sh").write_text(jobs.RUN_SH)
    (d / "kill.sh").write_text(jobs.KILL_SH)
    (d / "command.sh").write_text("true\n")
    pid = int(_sh(jobs.START_SH, d, tmp_path / "nowhere", 1024, 30).strip())
    poll = _until_done(d, pid)
    assert (poll.exit_code, poll.err) == (
        126,
        f"workdir {tmp_path / 'nowhere'} does not exist in the bottle\n".encode(),
    )


def _in_a_pid_namespace(tmp_path: Path, scenario: str) -> str:
    """Run `scenario` (shell, $J = the job id, $P = the folder with the programs) as pid 1 of a fresh pid
    namespace, so /proc holds only the job's processes, as in a bottle. The kill and count programs walk
    /proc: on this host that is every process of the machine."""
    unshare = shutil.which("unshare")
    probe = subprocess.run(
        [unshare or "unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    if unshare is None or probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("unshare --pid needs util-linux and root")
        pytest.skip("unshare --pid is not available here (util-linux, root)")
    for name, text in (("start.sh", jobs.START_SH), ("count.sh", jobs.COUNT_SH), ("poll.sh", jobs.POLL_SH)):
        (tmp_path / name).write_text(text)
    d = tmp_path / "j-0123456789"
    d.mkdir()
    (d / "run.sh").write_text(jobs.RUN_SH)
    (d / "kill.sh").write_text(jobs.KILL_SH)
    env = {**os.environ, "J": d.name, "P": str(tmp_path)}
    res = subprocess.run(
        [unshare or "unshare", "--pid", "--fork", "--mount-proc", "/bin/sh", "-ec", scenario],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_deadline_kills_the_job_and_says_so(tmp_path: Path) -> None:
    out = _in_a_pid_namespace(
        tmp_path,
        """
        echo 'sleep 60' > "$P/$J/command.sh"
        pid=$(/bin/sh "$P/start.sh" "$P/$J" "$P" 1024 1)
        i=0; while [ ! -e "$P/$J/timed_out" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        echo "left $(/bin/sh "$P/count.sh" "$J" "$pid")"
        /bin/sh "$P/poll.sh" "$P/$J" "$pid" 0 0 0 0
        """,
    )
    left, _, poll_text = out.partition("\n")
    poll = jobs.parse_poll(poll_text)
    assert left == "left 0"
    assert poll.timed_out and poll.exit_code is None


def test_kill_ends_the_whole_job_even_a_child_in_its_own_session(tmp_path: Path) -> None:
    out = _in_a_pid_namespace(
        tmp_path,
        """
        echo 'setsid sleep 60 & sleep 60' > "$P/$J/command.sh"
        pid=$(/bin/sh "$P/start.sh" "$P/$J" "$P" 1024 30)
        sleep 0.5
        echo "before $(/bin/sh "$P/count.sh" "$J" "$pid")"
        /bin/sh "$P/$J/kill.sh" "$J" "$pid"
        echo "after $(/bin/sh "$P/count.sh" "$J" "$pid")"
        """,
    )
    before, after = (line.split() for line in out.splitlines())
    assert int(before[1]) >= 2  # the runner, the command's shell and its two sleeps
    assert after == ["after", "0"]
