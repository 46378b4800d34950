"""Agent command conventions: the exact argv an agent gets, and what its output means."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bottle_mcp.agents import agent_invocation, describe_line, parse_agent_result
from bottle_mcp.errors import ManifestError
from bottle_mcp.manifest import load_manifest

from ..conftest import REPO, ManifestFactory

PROMPT_PATH = "/home/bottle/.bottle-mcp/prompt.md"


def test_claude_code_gets_the_exact_command_line() -> None:
    lm = load_manifest(REPO / "manifests" / "claude.toml")
    agent = lm.manifest.agents["claude"]
    inv = agent_invocation(agent.command, PROMPT_PATH)
    assert inv.display(PROMPT_PATH) == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
        "--append-system-prompt-file",
        "/home/bottle/.bottle-mcp/prompt.md",
    ]
    assert inv.prompt_on_stdin
    assert inv.script(PROMPT_PATH) == (
        "exec claude -p --output-format stream-json --verbose --dangerously-skip-permissions "
        '--append-system-prompt-file /home/bottle/.bottle-mcp/prompt.md < "$BOTTLE_MCP_JOB_DIR/prompt"\n'
    )
    assert sorted(agent.credentials) == ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]


def test_claude_without_a_system_prompt_gets_no_prompt_flag() -> None:
    inv = agent_invocation(["claude", "-p"], None)
    assert inv.display(None) == ["claude", "-p"]


def test_a_command_that_places_the_system_prompt_itself_is_left_alone() -> None:
    inv = agent_invocation(["/usr/bin/claude", "-p", "--system-prompt-file", "{system_prompt_file}"], PROMPT_PATH)
    assert inv.display(PROMPT_PATH) == ["/usr/bin/claude", "-p", "--system-prompt-file", PROMPT_PATH]


def _run_script(script: str, prompt: str, tmp_path: Path) -> list[str]:
    """Run a launcher script with the host's /bin/sh; the agent is printf printing its argv."""
    (tmp_path / "prompt").write_text(prompt)
    proc = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        env={"PATH": os.environ["PATH"], "BOTTLE_MCP_JOB_DIR": str(tmp_path)},
        cwd=tmp_path,
        check=True,
    )
    return proc.stdout.decode().split("\0")[:-1]


HOSTILE = "do it'; touch pwned; echo '\n$(touch pwned2) `touch pwned3` \"$HOME\" -rf *"


def test_prompt_placeholder_stays_one_argument_whatever_it_holds(tmp_path: Path) -> None:
    inv = agent_invocation(["printf", "%s\\0", "--task={prompt}", "{prompt}"], None)
    assert not inv.prompt_on_stdin
    argv = _run_script(inv.script(None), HOSTILE, tmp_path)
    assert argv == [f"--task={HOSTILE}", HOSTILE]
    assert not list(tmp_path.glob("pwned*"))


def test_prompt_file_placeholder_names_the_file(tmp_path: Path) -> None:
    inv = agent_invocation(["printf", "%s\\0", "--prompt-file={prompt_file}"], None)
    argv = _run_script(inv.script(None), HOSTILE, tmp_path)
    assert argv == [f"--prompt-file={tmp_path}/prompt"]


def test_prompt_goes_to_stdin_without_a_placeholder(tmp_path: Path) -> None:
    inv = agent_invocation(["cat"], None)
    (tmp_path / "prompt").write_text(HOSTILE)
    proc = subprocess.run(
        ["/bin/sh", "-c", inv.script(None)],
        capture_output=True,
        env={"PATH": os.environ["PATH"], "BOTTLE_MCP_JOB_DIR": str(tmp_path)},
        check=True,
    )
    assert proc.stdout.decode() == HOSTILE


def test_manifest_rejects_unknown_placeholders_but_not_shell_variables(write_manifest: ManifestFactory) -> None:
    base = """
        [bottles.b]
        image = "x"
        [agents.a]
        bottle = "b"
        prompt = "p"
        command = {command}
        """
    ok = write_manifest(base.replace("{command}", "['bash', '-c', 'cat ${HOME}/x', '{prompt}']"), "ok.toml")
    assert load_manifest(ok).manifest.agents["a"].command[3] == "{prompt}"
    bad = write_manifest(base.replace("{command}", "['agent', '{task}']"), "bad.toml")
    with pytest.raises(ManifestError, match=r"agents\.a\.command.*unknown placeholder \{task\}"):
        load_manifest(bad)


def test_manifest_rejects_a_system_prompt_placeholder_without_a_prompt(write_manifest: ManifestFactory) -> None:
    path = write_manifest(
        """
        [bottles.b]
        image = "x"
        [agents.a]
        bottle = "b"
        command = ["agent", "--system={system_prompt_file}"]
        """
    )
    with pytest.raises(ManifestError, match="no prompt or prompt_file"):
        load_manifest(path)


RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 5120,
    "num_turns": 4,
    "result": "Fixed the test.\x1b[2J",
    "session_id": "abc",
    "total_cost_usd": 0.42,
}


def test_stream_json_output_yields_the_final_answer_cost_and_turns() -> None:
    lines = [
        {"type": "system", "subtype": "init", "model": "m"},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "working"}]}},
        RESULT,
    ]
    out = ("\n".join(json.dumps(e) for e in lines) + "\n").encode()
    result = parse_agent_result(out, text_cap=1000)
    assert result is not None
    assert (result.final_answer, result.cost_usd, result.num_turns, result.is_error) == (
        "Fixed the test.\\x1b[2J",
        0.42,
        4,
        False,
    )


def test_json_output_and_plain_output() -> None:
    single = parse_agent_result(json.dumps({**RESULT, "total_cost_usd": None, "cost_usd": 1}).encode(), text_cap=5)
    assert single is not None and single.cost_usd == 1.0 and single.final_answer == "Fixed"
    assert parse_agent_result(b"All done, nothing structured here.\n{not json\n", text_cap=100) is None


def test_result_fields_of_the_wrong_type_are_dropped_not_trusted() -> None:
    odd = {"type": "result", "result": ["x"], "num_turns": "4", "total_cost_usd": True, "is_error": "no"}
    result = parse_agent_result(json.dumps(odd).encode(), text_cap=100)
    assert result is not None
    assert (result.final_answer, result.num_turns, result.cost_usd, result.is_error) == (None, None, None, None)


def test_progress_lines_are_summarized() -> None:
    tool = {"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash"}]}}
    assert describe_line(json.dumps(tool).encode()) == "using tool Bash"
    assert describe_line(b"  compiling \x1b[31mfoo\x1b[0m  ") == "compiling \\x1b[31mfoo\\x1b[0m"
    assert describe_line(b"x" * 500, limit=20) == "x" * 17 + "..."
    assert describe_line(b"   ") is None
    retry = {"type": "system", "subtype": "api_retry", "attempt": 2, "max_retries": 10}
    assert describe_line(json.dumps(retry).encode()) == "model API unreachable, retry 2 of 10"
