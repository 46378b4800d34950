"""`bottle-mcp init`: a commented starter manifest, and how to register the server in agent hosts.

The manifest is built from the pydantic models and written with tomli-w, so it
always validates; the comments are the models' own descriptions, placed above
each table and key, so they cannot drift from what the loader accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import types
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import tomli_w
from pydantic import BaseModel

from .manifest import AgentDef, BottleDef, Build, HostSettings, Manifest, Resources

SERVER_NAME = "bottle-mcp"
WORKER_IMAGE = "bottle-mcp/worker:latest"


def worker_context() -> Path:
    """The worker image's build folder shipped inside the package."""
    return Path(str(resources.files("bottle_mcp") / "data" / "images" / "worker"))


def starter_manifest(build_context: Path | None = None) -> Manifest:
    context = build_context or worker_context()
    return Manifest(
        host=HostSettings(roots=[], skills_dir="~/.claude/skills", output_cap="16k", max_bottles=8),
        bottles={
            "offline": BottleDef(
                image=WORKER_IMAGE,
                build=Build(context=str(context)),
                runtime="auto",
                network="none",
                env={"LANG": "C.UTF-8"},
                resources=Resources(cpus=1.0, memory="1g", pids=256, tmp_size="256m", home_size="256m"),
                user="1000:1000",
            )
        },
        agents={
            "worker": AgentDef(
                bottle="offline",
                description="A general worker that runs shell tasks in an offline bottle.",
                command=["bash", "-lc", 'cat "$HOME/.bottle-mcp/prompt.md"'],
                prompt="You are a careful worker. Do only what the task asks and report what you changed.",
                skills=[],
                credentials=[],
            )
        },
    )


# -- comments from the models ---------------------------------------------------------------


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds: directly, optionally, or as the values of a dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is dict and len(args) == 2:
        return _model_in(args[1])
    if origin in (Union, types.UnionType):
        for arg in args:
            found = _model_in(arg)
            if found is not None:
                return found
    if origin is not None and args:  # Annotated[...]
        return _model_in(args[0])
    return None


def _table_model(path: list[str]) -> type[BaseModel] | None:
    """[bottles, offline, resources] -> Resources, walking the models' fields."""
    model: type[BaseModel] | None = Manifest
    i = 0
    while model is not None and i < len(path):
        field = model.model_fields.get(path[i])
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        is_dict = get_origin(field.annotation) is dict
        i += 2 if is_dict else 1  # a dict of tables: skip the user's key (e.g. 'offline')
        model = inner
    return model


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.strip().splitlines()]


_TABLE = re.compile(r"^\[([A-Za-z0-9_.\"-]+)\]$")
_KEY = re.compile(r"^([A-Za-z0-9_-]+) = ")


def commented(toml_text: str) -> str:
    out: list[str] = []
    model: type[BaseModel] | None = Manifest
    for line in toml_text.splitlines():
        if m := _TABLE.match(line):
            path = m.group(1).split(".")
            model = _table_model(path)
            if out and out[-1] != "":
                out.append("")
            if model is not None and model.__doc__:
                out += _comment(model.__doc__.splitlines()[0])
        elif (m := _KEY.match(line)) and model is not None:
            field = model.model_fields.get(m.group(1))
            if field is not None and field.description:
                out += _comment(field.description)
        out.append(line)
    return "\n".join(out) + "\n"


HEADER = """\
# bottle-mcp manifest: the bottles (sandboxes) a supervising agent may start, and the agents in them.
# The agent can never widen what this file allows. Reference: docs/manifest.md; JSON Schema:
# docs/manifest.schema.json (`bottle-mcp schema`). Check it with `bottle-mcp doctor --manifest FILE`.
# Relative paths start at this file's folder; ~ is your home.

"""


def starter_text(build_context: Path | None = None) -> str:
    data = starter_manifest(build_context).model_dump(mode="json", exclude_none=True)
    # Empty tables and lists of tables would only add noise to a starter.
    for bottle in data["bottles"].values():
        for key in ("ssh", "git"):
            if not bottle[key]:
                del bottle[key]
        if not bottle["build"]["args"]:
            del bottle["build"]["args"]
    return HEADER + commented(tomli_w.dumps(data))


# -- registration in agent hosts --------------------------------------------------------------


def server_command(manifest: Path) -> list[str]:
    """argv that starts this installation's server; absolute, since hosts start it with a small PATH."""
    script = Path(sys.executable).parent / "bottle-mcp"
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "bottle_mcp"]
    return [*head, "serve", "--manifest", str(manifest)]


def _env_names(manifest: Manifest | None) -> list[str]:
    names = [n for n in ("DOCKER_HOST",) if os.environ.get(n)]
    if manifest is not None:
        names += sorted({c for a in manifest.agents.values() for c in a.credentials})
    return names


def registration(manifest_path: Path, manifest: Manifest | None = None) -> dict[str, Any]:
    """How to register the server: Claude Code's command, a .mcp.json entry, Claude Desktop's config."""
    argv = server_command(manifest_path.absolute())
    names = _env_names(manifest)
    claude = ["claude", "mcp", "add", "--scope", "user"]
    for n in names:
        claude += ["-e", f"{n}=${n}"]
    claude += [SERVER_NAME, "--", *argv]
    entry: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
    if names:
        entry["env"] = {n: "${" + n + "}" for n in names}
    desktop = {k: v for k, v in entry.items() if k != "env"}
    if names:
        desktop["env"] = {n: f"<value of {n}>" for n in names}
    return {
        "claude_code": claude,
        "mcp_json": {"mcpServers": {SERVER_NAME: {"type": "stdio", **entry}}},
        "claude_desktop": {"mcpServers": {SERVER_NAME: desktop}},
    }


_ENV_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\$[A-Za-z_][A-Za-z0-9_]*")


def registration_text(reg: dict[str, Any]) -> str:
    import json

    # NAME=$NAME stays unquoted-ish so that the shell puts the value in when the command is run.
    claude = " ".join(
        f'{a.partition("=")[0]}="{a.partition("=")[2]}"' if _ENV_ARG.fullmatch(a) else shlex.quote(a)
        for a in reg["claude_code"]
    )
    return "\n".join(
        [
            "Register the server in Claude Code (all projects; use --scope project to write .mcp.json instead):",
            "",
            f"  {claude}",
            "",
            "Or commit this to a project's .mcp.json (Claude Code expands ${VAR} from your environment):",
            "",
            _indent(json.dumps(reg["mcp_json"], indent=2)),
            "",
            "Claude Desktop: merge this into claude_desktop_config.json (macOS: ~/Library/Application Support/Claude/,",
            "Windows: %APPDATA%\\Claude\\) and restart it:",
            "",
            _indent(json.dumps(reg["claude_desktop"], indent=2)),
            "",
            "Then check the set-up with `bottle-mcp doctor` and, in the host, ask the agent to call the doctor tool.",
        ]
    )


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
