"""A scripted stand-in of the Messages API, and a driver that runs Claude Code against it.

Run as a program inside a network namespace with only loopback (see test_claude_code.py):

    python -m tests.clients.model_standin SCRIPT.json RECORD.json -- CLAUDE ARGS...

It serves the stand-in on 127.0.0.1 (a free port), points Claude Code at it with
ANTHROPIC_BASE_URL, and runs Claude Code to its end. Each turn of the model answers with the
next step of the script: a tool call whose arguments may name fields of earlier tool results
("$plan_id" is the plan_id found in any earlier structured result), or, past the script's end,
a closing text. Everything the model was sent back (the tool_result blocks of each request)
is written to RECORD.json with the exit status and output of Claude Code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SERVER = "bottles"


def _results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool_result block in the conversation, oldest first, with its text."""
    out = []
    for m in messages:
        if m.get("role") != "user" or not isinstance(m.get("content"), list):
            continue
        for block in m["content"]:
            if block.get("type") != "tool_result":
                continue
            content = block.get("content")
            if isinstance(content, list):
                text = "".join(c.get("text", "") for c in content if isinstance(c, dict))
            else:
                text = str(content or "")
            out.append({"is_error": bool(block.get("is_error")), "text": text})
    return out


def _known(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-level (and job) fields of every earlier result that parses as JSON: what a model would read."""
    known: dict[str, Any] = {}
    for r in results:
        try:
            data = json.loads(r["text"])
        except ValueError:
            continue
        if isinstance(data, dict):
            known.update({k: v for k, v in data.items() if isinstance(v, str | int | float | bool)})
            if isinstance(data.get("job"), dict):
                known.update({f"job.{k}": v for k, v in data["job"].items() if isinstance(v, str)})
    return known


def _fill(args: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    def one(v: Any) -> Any:
        if isinstance(v, str) and v.startswith("$"):
            return known.get(v[1:], v)
        return v

    return {k: one(v) for k, v in args.items()}


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _reply(step: int, script: list[dict[str, Any]], known: dict[str, Any]) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": f"msg_{step}",
            "type": "message",
            "role": "assistant",
            "model": "stand-in",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
    }
    if step < len(script):
        call = script[step]
        name = call["tool"] if call.get("builtin") else f"mcp__{SERVER}__{call['tool']}"
        block: dict[str, Any] = {"type": "tool_use", "id": f"toolu_{step:02d}", "name": name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(_fill(call.get("args", {}), known))}
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": "All steps are done."}
        stop = "end_turn"
    return _sse(
        [
            start,
            {"type": "content_block_start", "index": 0, "content_block": block},
            {"type": "content_block_delta", "index": 0, "delta": delta},
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
            {"type": "message_stop"},
        ]
    )


class StandIn:
    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = script
        self.turns: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                with standin.lock:
                    standin.other.append(f"GET {self.path}")
                self._send(404, b"{}", "application/json")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                path = self.path.split("?")[0]
                if path.endswith("/count_tokens"):
                    self._send(200, b'{"input_tokens": 100}', "application/json")
                    return
                if path != "/v1/messages":
                    with standin.lock:
                        standin.other.append(f"POST {self.path}")
                    self._send(404, b"{}", "application/json")
                    return
                messages = body.get("messages", [])
                step = sum(1 for m in messages if m.get("role") == "assistant")
                results = _results(messages)
                with standin.lock:
                    standin.turns.append(
                        {
                            "step": step,
                            "tools": {t.get("name", ""): t.get("input_schema") for t in body.get("tools", []) or []},
                            "sent": results[-1] if results and step > 0 else None,
                        }
                    )
                self._send(200, _reply(step, standin.script, _known(results)), "text/event-stream")

        return Handler


def main(argv: list[str]) -> int:
    script_path, record_path, sep, *claude = argv
    assert sep == "--" and claude
    standin = StandIn(json.loads(Path(script_path).read_text()))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), standin.handler())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = {**os.environ, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{httpd.server_address[1]}"}
    done = subprocess.run(claude, env=env, capture_output=True, text=True, timeout=600, check=False)
    httpd.shutdown()
    record = {
        "exit_code": done.returncode,
        "stdout": done.stdout[-20000:],
        "stderr": done.stderr[-20000:],
        "turns": standin.turns,
        "other_requests": standin.other,
    }
    Path(record_path).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
