"""Value objects for work handed to a bottle and brought back: jobs, copies out, commits, diffs.

Everything here that carries text from inside a bottle carries it made safe (see output.py);
the bottle's agent is untrusted, so none of it is an instruction to the supervisor.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .frozen import Frozen
from .textfit import clip, clip_list

JobStatus = Literal["running", "exited", "timed_out", "cancelled", "lost", "bottle_gone"]
JobKind = Literal["agent", "exec"]


class AgentResult(Frozen):
    """What an agent printing Claude Code's json / stream-json output reported at the end."""

    final_answer: str | None = Field(
        description="The agent's final message (untrusted text from the bottle; a long one is cut in the middle, "
        "and the whole of it is in the job's stdout file)."
    )
    is_error: bool | None
    subtype: str | None = Field(description="e.g. 'success', 'error_max_turns'.")
    cost_usd: float | None
    num_turns: int | None
    duration_ms: int | None
    session_id: str | None

    @field_validator("final_answer")
    @classmethod
    def _short(cls, v: str | None) -> str | None:
        return None if v is None else clip(v, 3000, "final answer")


class JobInfo(Frozen):
    job_id: str
    status: JobStatus = Field(
        description="running; exited (see exit_code); timed_out or cancelled (its processes were killed); "
        "lost (it died without an exit status); bottle_gone."
    )
    exit_code: int | None
    kind: JobKind
    bottle_id: str
    started_at: str
    timeout_s: float
    workdir: str
    output_dir: str = Field(description="Folder in the bottle holding the job's stdout and stderr files.")
    command: list[str] = Field(
        description="What runs: the agent's argv, or ['/bin/sh', '-c', COMMAND] (long words cut in the middle)."
    )

    @field_validator("command")
    @classmethod
    def _short_words(cls, v: list[str]) -> list[str]:
        return clip_list([clip(w, 1000, "command") for w in v], 3000, "words")[0]


class JobOutput(Frozen):
    """One stream of a job: the slice returned now and where the whole of it lives."""

    bytes_total: int = Field(description="Bytes of this stream kept so far in the bottle.")
    more: bool = Field(description="True when more output follows what was returned: wait again with next_cursor.")
    dropped_bytes: int = Field(description="Bytes the job wrote beyond the per-job limit, discarded in the bottle.")
    path: str = Field(description="The file in the bottle holding the whole stream (read it with exec or cp_out).")
    text: str = Field(description="Output from the cursor on, at most the output cap.")


class JobResult(Frozen):
    done: bool = Field(description="False while the job runs: call wait_job again with next_cursor.")
    job: JobInfo
    waited_ms: int
    cursor: str = Field(description="The cursor this output starts at.")
    next_cursor: str = Field(description="Pass it to the next wait_job to get only newer output.")
    notes: list[str] = Field(default_factory=list)
    agent_result: AgentResult | None = Field(
        None, description="Parsed final answer, cost and turns, for agents emitting Claude Code json output."
    )
    stdout: JobOutput
    stderr: JobOutput


class JobList(Frozen):
    total: int = Field(description="Jobs of this bottle in all.")
    next_cursor: str | None = Field(description="Pass it as cursor to list the next page; null on the last page.")
    jobs: list[JobInfo]


class CancelResult(Frozen):
    job: JobInfo
    processes_left: int = Field(description="Processes of the job still alive in the bottle after the kill (0).")
    notes: list[str] = Field(default_factory=list)


class CopyOutResult(Frozen):
    bottle_id: str
    files: int
    directories: int
    bytes: int
    duration_ms: int
    bottle_path: str
    host_path: str
    skipped: list[str] = Field(description="Members not copied (links, devices, ...) and why (the first ones).")
    written: list[str] = Field(description="Host paths written (the first ones).")

    @field_validator("skipped", "written")
    @classmethod
    def _few(cls, v: list[str]) -> list[str]:
        return clip_list([clip(p, 600, "path") for p in v], 8000, "paths")[0]


class CommitInfo(Frozen):
    sha: str
    subject: str = Field(description="First line of the message (untrusted text from the bottle; long ones cut).")

    @field_validator("subject")
    @classmethod
    def _short(cls, v: str) -> str:
        return clip(v, 200, "subject")


class BranchResult(Frozen):
    branch: str | None = Field(description="The host branch created; null when there was nothing to bring back.")
    bottle_id: str
    host_repo: str
    start: str | None = Field(description="The commit the bottle started from.")
    head: str | None
    descends_from_start: bool
    notes: list[str] = Field(default_factory=list)
    commits: list[CommitInfo] = Field(
        description="New commits, newest first (at most 200, fewer when their subjects are long)."
    )
    diffstat: str = Field(description="What changed, per file (long ones cut in the middle).")

    @field_validator("diffstat")
    @classmethod
    def _short(cls, v: str) -> str:
        return clip(v, 6000, "diffstat")

    @field_validator("commits")
    @classmethod
    def _few(cls, v: list[CommitInfo]) -> list[CommitInfo]:
        out, used = [], 0
        for c in v:  # as many as fit in about 20,000 characters (newest first)
            used += len(c.sha) + len(c.subject) + 30
            if used > 20_000:
                break
            out.append(c)
        return out


class DiffResult(Frozen):
    bottle_id: str
    start: str | None
    head: str | None
    truncated: bool = Field(description="True when the diff went over the cap and its middle was cut.")
    diff_bytes: int = Field(0, description="Size of the whole diff.")
    diff_path: str | None = Field(None, description="File in the bottle holding the whole diff.")
    untracked_count: int = Field(0, description="New files git does not track yet, in all.")
    notes: list[str] = Field(default_factory=list)
    stat: str = Field(description="Changed files and line counts (long ones cut in the middle).")
    untracked: list[str] = Field(description="New files git does not track yet (not in the diff; the first ones).")
    diff: str = Field(description="Changes since the start (commits and uncommitted edits), head and tail if cut.")

    @field_validator("stat")
    @classmethod
    def _short(cls, v: str) -> str:
        return clip(v, 4000, "stat")

    @field_validator("untracked")
    @classmethod
    def _few(cls, v: list[str]) -> list[str]:
        return clip_list([clip(p, 600, "path") for p in v], 4000, "untracked files")[0]
