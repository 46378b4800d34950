"""Value objects for work handed to a bottle and brought back: jobs, copies out, commits, diffs.

Everything here that carries text from inside a bottle carries it made safe (see output.py);
the bottle's agent is untrusted, so none of it is an instruction to the supervisor.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .frozen import Frozen

JobStatus = Literal["running", "exited", "timed_out", "cancelled", "lost", "bottle_gone"]
JobKind = Literal["agent", "exec"]


class AgentResult(Frozen):
    """What an agent printing Claude Code's json / stream-json output reported at the end."""

    final_answer: str | None = Field(description="The agent's final message (untrusted text from the bottle).")
    is_error: bool | None
    subtype: str | None = Field(description="e.g. 'success', 'error_max_turns'.")
    cost_usd: float | None
    num_turns: int | None
    duration_ms: int | None
    session_id: str | None


class JobInfo(Frozen):
    job_id: str
    bottle_id: str
    kind: JobKind
    command: list[str] = Field(description="What runs: the agent's argv, or ['/bin/sh', '-c', COMMAND].")
    workdir: str
    status: JobStatus = Field(
        description="running; exited (see exit_code); timed_out or cancelled (its processes were killed); "
        "lost (it died without an exit status); bottle_gone."
    )
    exit_code: int | None
    started_at: str
    timeout_s: float
    output_dir: str = Field(description="Folder in the bottle holding the job's stdout and stderr files.")


class JobOutput(Frozen):
    """One stream of a job: the slice returned now and where the whole of it lives."""

    text: str = Field(description="Output from the cursor on, at most the output cap.")
    bytes_total: int = Field(description="Bytes of this stream kept so far in the bottle.")
    path: str = Field(description="The file in the bottle holding the whole stream (read it with exec or cp_out).")
    more: bool = Field(description="True when more output follows what was returned: wait again with next_cursor.")
    dropped_bytes: int = Field(description="Bytes the job wrote beyond the per-job limit, discarded in the bottle.")


class JobResult(Frozen):
    job: JobInfo
    done: bool = Field(description="False while the job runs: call wait_job again with next_cursor.")
    stdout: JobOutput
    stderr: JobOutput
    cursor: str = Field(description="The cursor this output starts at.")
    next_cursor: str = Field(description="Pass it to the next wait_job to get only newer output.")
    agent_result: AgentResult | None = Field(
        None, description="Parsed final answer, cost and turns, for agents emitting Claude Code json output."
    )
    waited_ms: int
    notes: list[str] = Field(default_factory=list)


class JobList(Frozen):
    jobs: list[JobInfo]


class CancelResult(Frozen):
    job: JobInfo
    processes_left: int = Field(description="Processes of the job still alive in the bottle after the kill (0).")
    notes: list[str] = Field(default_factory=list)


class CopyOutResult(Frozen):
    bottle_id: str
    bottle_path: str
    host_path: str
    files: int
    directories: int
    bytes: int
    written: list[str] = Field(description="Host paths written (the first 200).")
    skipped: list[str] = Field(description="Members not copied (links, devices, ...) and why.")
    duration_ms: int


class CommitInfo(Frozen):
    sha: str
    subject: str = Field(description="First line of the message (untrusted text from the bottle).")


class BranchResult(Frozen):
    bottle_id: str
    host_repo: str
    branch: str | None = Field(description="The host branch created; null when there was nothing to bring back.")
    start: str | None = Field(description="The commit the bottle started from.")
    head: str | None
    descends_from_start: bool
    commits: list[CommitInfo] = Field(description="New commits, newest first (at most 200).")
    diffstat: str
    notes: list[str] = Field(default_factory=list)


class DiffResult(Frozen):
    bottle_id: str
    start: str | None
    head: str | None
    stat: str
    diff: str = Field(description="Changes since the start (commits and uncommitted edits), capped.")
    untracked: list[str] = Field(description="New files git does not track yet (not in the diff).")
    truncated: bool
