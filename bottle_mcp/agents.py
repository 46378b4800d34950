"""How an agent's manifest command becomes a process in the bottle, and what its output means.

The manifest's `command` is an argv (no shell). Three placeholders may appear in its elements:

    {prompt_file}         path of a file in the bottle holding the task prompt
    {prompt}              the task prompt itself, as (part of) one argv element
    {system_prompt_file}  path of the system prompt provisioned at launch

When neither `{prompt}` nor `{prompt_file}` appears, the task prompt arrives on stdin. A command
whose program is `claude` (Claude Code) gets `--append-system-prompt-file {system_prompt_file}`
added when the agent has a system prompt and the command does not place it itself.

The task prompt never becomes shell text: the launcher script names files and expands
`"$(cat FILE)"` for `{prompt}`, so whatever the prompt holds stays one argument.

Agents that print Claude Code's `--output-format json` or `stream-json` get their final answer,
cost and turn count parsed from their output.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .output import safe_text
from .results import AgentResult

PROMPT = "{prompt}"
PROMPT_FILE = "{prompt_file}"
SYSTEM_PROMPT_FILE = "{system_prompt_file}"
PLACEHOLDERS = (PROMPT, PROMPT_FILE, SYSTEM_PROMPT_FILE)
# `${name}` is shell syntax inside `bash -c` strings, not ours.
PLACEHOLDER_RE = re.compile(r"(?<!\$)\{[a-z_]+\}")

# Shell expansions the launcher script uses for each placeholder; $BOTTLE_MCP_JOB_DIR is set by the runner.
_EXPANSIONS = {
    PROMPT: '"$(cat -- "$BOTTLE_MCP_JOB_DIR/prompt")"',
    PROMPT_FILE: '"$BOTTLE_MCP_JOB_DIR/prompt"',
}


def unknown_placeholders(element: str) -> list[str]:
    return [p for p in PLACEHOLDER_RE.findall(element) if p not in PLACEHOLDERS]


def is_claude_code(command: list[str]) -> bool:
    return bool(command) and PurePosixPath(command[0]).name == "claude"


@dataclass(frozen=True)
class AgentInvocation:
    """The argv template an agent run uses, and where its prompt goes."""

    argv: list[str]
    prompt_on_stdin: bool

    def display(self, system_prompt_path: str | None) -> list[str]:
        """The argv as it will run, with the prompt shown as a placeholder, never its text."""
        if system_prompt_path is None:
            return list(self.argv)
        return [e.replace(SYSTEM_PROMPT_FILE, system_prompt_path) for e in self.argv]

    def script(self, system_prompt_path: str | None) -> str:
        """A /bin/sh script that execs the agent; the prompt is read from files, never inlined."""
        words = [_shell_word(e, system_prompt_path) for e in self.argv]
        stdin = '"$BOTTLE_MCP_JOB_DIR/prompt"' if self.prompt_on_stdin else "/dev/null"
        return f"exec {' '.join(words)} < {stdin}\n"


def agent_invocation(command: list[str], system_prompt_path: str | None) -> AgentInvocation:
    """Apply the placeholder conventions (see the module docstring) to a manifest command."""
    argv = list(command)
    text = "\0".join(argv)
    if (
        is_claude_code(argv)
        and system_prompt_path is not None
        and SYSTEM_PROMPT_FILE not in text
        and not any(a.startswith(("--append-system-prompt", "--system-prompt")) for a in argv)
    ):
        argv += ["--append-system-prompt-file", SYSTEM_PROMPT_FILE]
    return AgentInvocation(argv=argv, prompt_on_stdin=PROMPT not in text and PROMPT_FILE not in text)


def _shell_word(element: str, system_prompt_path: str | None) -> str:
    """One argv element as one shell word: literal text quoted, placeholders expanded."""
    out = []
    pos = 0
    for m in PLACEHOLDER_RE.finditer(element):
        if m.start() > pos:
            out.append(shlex.quote(element[pos : m.start()]))
        name = m.group()
        if name == SYSTEM_PROMPT_FILE:
            if system_prompt_path is None:
                raise ValueError("the command uses {system_prompt_file} but the agent has no prompt")
            out.append(shlex.quote(system_prompt_path))
        else:
            out.append(_EXPANSIONS[name])
        pos = m.end()
    if pos < len(element) or not out:
        out.append(shlex.quote(element[pos:]))
    return "".join(out)


# -- structured results --------------------------------------------------------------


def parse_agent_result(stdout: bytes, *, text_cap: int) -> AgentResult | None:
    """The final `result` event of Claude Code's json / stream-json output, if the output has one."""
    for raw in reversed(stdout.splitlines()):
        line = raw.strip()
        if not line.startswith(b"{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "result":
            return _result_from_event(event, text_cap)
    return None


def _num(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)


def _text(value: Any, cap: int) -> str | None:
    if not isinstance(value, str):
        return None
    text, _ = safe_text(value.encode()[:cap])
    return text


def _result_from_event(event: dict[str, Any], cap: int) -> AgentResult:
    cost = event.get("total_cost_usd")
    if cost is None:
        cost = event.get("cost_usd")
    return AgentResult(
        final_answer=_text(event.get("result"), cap),
        is_error=event["is_error"] if isinstance(event.get("is_error"), bool) else None,
        subtype=_text(event.get("subtype"), 64),
        cost_usd=_num(cost, float),
        num_turns=_num(event.get("num_turns"), int),
        duration_ms=_num(event.get("duration_ms"), int),
        session_id=_text(event.get("session_id"), 128),
    )


def describe_line(line: bytes, limit: int = 200) -> str | None:
    """A short progress message for one output line (stream-json events are summarized)."""
    line = line.strip()
    if not line:
        return None
    if line.startswith(b"{"):
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            summary = _describe_event(event)
            if summary is not None:
                return _clip(summary, limit)
    text, _ = safe_text(line[: limit * 4])
    return _clip(text, limit)


def _describe_event(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        return f"agent started (model {event.get('model', '?')})"
    if kind == "system" and event.get("subtype") == "api_retry":
        return f"model API unreachable, retry {event.get('attempt', '?')} of {event.get('max_retries', '?')}"
    if kind == "result":
        return f"agent finished ({event.get('subtype', '?')})"
    message = event.get("message")
    if kind in {"assistant", "user"} and isinstance(message, dict):
        for part in message.get("content") or []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                return f"{kind}: {part['text']}"
            if part.get("type") == "tool_use":
                return f"using tool {part.get('name', '?')}"
            if part.get("type") == "tool_result":
                return "tool result received"
    return None


def _clip(text: str, limit: int) -> str:
    text, _ = safe_text(" ".join(text.split()).encode())
    return text if len(text) <= limit else text[: limit - 3] + "..."
