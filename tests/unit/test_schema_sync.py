"""The published JSON Schema (docs/manifest.schema.json) is the models' schema, and it accepts the real manifests."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from bottle_mcp.cli import main
from bottle_mcp.docgen import schema_text
from bottle_mcp.manifest import manifest_json_schema
from bottle_mcp.starter import starter_text

from ..conftest import REPO

PUBLISHED = REPO / "docs" / "manifest.schema.json"
FIX = "the manifest models changed: run `bottle-mcp gen-docs` (or `bottle-mcp schema -o docs/manifest.schema.json`)"


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(PUBLISHED.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_published_schema_matches_the_models() -> None:
    assert PUBLISHED.read_text() == schema_text(), FIX


def test_schema_command_prints_the_published_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(PUBLISHED.read_text()) == manifest_json_schema()


@pytest.mark.parametrize(
    "manifest", [REPO / "manifests" / "example.toml", REPO / "bottle_mcp" / "data" / "example.toml"], ids=str
)
def test_the_shipped_manifests_satisfy_the_schema(manifest: Path) -> None:
    validator().validate(tomllib.loads(manifest.read_text()))


def test_the_starter_manifest_satisfies_the_schema() -> None:
    validator().validate(tomllib.loads(starter_text()))


def test_the_schema_flags_a_misspelt_key_as_an_editor_would() -> None:
    data = tomllib.loads(starter_text())
    data["bottles"]["offline"]["netwrok"] = "none"
    errors = list(validator().iter_errors(data))
    assert any("netwrok" in e.message for e in errors)
