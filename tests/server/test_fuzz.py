"""Property-based: whatever a manifest or a tool call holds, the server answers and every error says what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.types import TextContent

from bottle_mcp.backends.fake import FakeBackend
from bottle_mcp.errors import ManifestError
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import parse_manifest
from bottle_mcp.server import build_server
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import MINIMAL

TOOLS = ["prepare_bottle", "launch_bottle", "exec", "cp_in", "stop_bottle", "list_active", "cleanup"]
KEYS = ["agent", "copy_cwd", "plan_id", "bottle_id", "command", "timeout_s", "workdir", "host_path", "bottle_path"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=3).map(lambda s: s * 70_000),  # huge
    st.sampled_from(["b-00000000", "p-000000000000", "../../etc/passwd", "/workspace", "worker", "\x00", "yes"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
arguments = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), values, max_size=5)


def _service(tmp: Path) -> BottleService:
    manifest = tmp / "m.toml"
    manifest.write_text(MINIMAL)
    return BottleService(
        ServiceConfig(manifest_path=manifest, cwd=tmp, host_roots=[tmp]), FakeBackend(Instance.current())
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(calls=st.lists(st.tuples(st.sampled_from([*TOOLS, "no_such_tool"]), arguments), min_size=1, max_size=4))
def test_any_tool_call_gets_an_answer_and_errors_explain_themselves(
    tmp_path: Path, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    async def run() -> None:
        service = _service(tmp_path)
        async with Client(build_server(service)) as client:
            # One real bottle, so that calls naming a live id reach deep paths too.
            plan = (await client.call_tool("prepare_bottle", {"agent": "worker"})).structured_content or {}
            live = (await client.call_tool("launch_bottle", {"plan_id": plan["plan_id"]})).structured_content or {}
            for name, raw_args in calls:
                args = raw_args
                if args.get("bottle_id") == "b-00000000":
                    args = {**args, "bottle_id": live["bottle_id"]}
                result = await client.call_tool(name, args)
                if result.is_error:
                    text = " ".join(c.text for c in result.content if isinstance(c, TextContent)).strip()
                    # The SDK's bare "Error executing tool X" means an unexpected exception: a crash.
                    assert text and text != f"Error executing tool {name}", (name, args)
                    assert len(text.removeprefix(f"Error executing tool {name}: ")) >= 20, text
            # And the server still works afterwards.
            assert not (await client.call_tool("list_active", {})).is_error

    anyio.run(run)


def _manifest_error(data: bytes, path: Path) -> str | None:
    """None when the manifest loads, else the ManifestError's text (any other exception fails the test)."""
    try:
        parse_manifest(data, path)
    except ManifestError as e:
        return str(e)
    return None


toml_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=30),
        st.sampled_from(["bottle-mcp/worker:latest", "512m", "none", "runc", "1000:1000", "/workspace"]),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
section_keys = st.sampled_from(
    [
        "image",
        "runtime",
        "network",
        "env",
        "resources",
        "user",
        "home",
        "workdir",
        "warm_pool",
        "bottle",
        "command",
        "prompt",
        "skills",
        "credentials",
        "egress",
    ]
)
tables = st.dictionaries(
    st.sampled_from(["offline", "x", "Bad Name", ""]),
    st.dictionaries(section_keys, toml_values, max_size=5),
    max_size=2,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "bottles": tables,
        "agents": tables,
        "host": st.dictionaries(
            st.sampled_from(["roots", "output_cap", "max_bottles", "skills_dir"]), toml_values, max_size=3
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(doc=documents)
def test_any_manifest_either_loads_or_says_where_and_what_is_wrong(doc: dict[str, Any]) -> None:
    path = Path("/nonexistent/fuzz.toml")
    message = _manifest_error(tomli_w.dumps(doc).encode(), path)
    if message is not None:
        assert str(path) in message
        assert len(message) > len(str(path)) + 20


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_manifest_give_a_manifest_error(data: bytes) -> None:
    message = _manifest_error(data, Path("/nonexistent/fuzz.toml"))
    assert message is None or "fuzz.toml" in message
