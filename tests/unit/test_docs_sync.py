"""docs/tools.md and docs/manifest.md agree with the live tool list and the manifest models."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from bottle_mcp.docgen import MORE, TABLES, generate, live_tools
from bottle_mcp.manifest import manifest_json_schema

from ..conftest import REPO

DOCS = REPO / "docs"

pytestmark = pytest.mark.anyio


async def test_generated_reference_docs_are_up_to_date() -> None:
    for name, text in (await generate()).items():
        assert (DOCS / name).read_text() == text, f"docs/{name} is out of date: run `bottle-mcp gen-docs`"


async def test_tools_md_documents_every_live_tool_and_every_argument() -> None:
    text = (DOCS / "tools.md").read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL))
    tools = await live_tools()
    assert set(sections) == {t.name for t in tools}
    for t in tools:
        for arg in t.input_schema.get("properties", {}):
            assert f"| `{arg}` |" in sections[t.name], f"tools.md does not document {t.name}({arg})"


def test_manifest_md_documents_every_key_of_every_table() -> None:
    text = (DOCS / "manifest.md").read_text()
    models: set[type[BaseModel]] = {m for _, m in TABLES}
    assert {m.__name__ for m in models} | {"Manifest"} >= set(manifest_json_schema()["$defs"])
    for path, model in TABLES:
        section = text.split(f"## `{path}`", 1)[1].split("\n## ", 1)[0]
        for key in model.model_fields:
            assert f"| `{key}` |" in section, f"manifest.md lacks {path} {key}"
    for (model_name, key), _ in MORE.items():
        model = next(m for m in models if m.__name__ == model_name)
        assert key in model.model_fields and not model.model_fields[key].description, (model_name, key)
