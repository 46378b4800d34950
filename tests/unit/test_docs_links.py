"""The README and the quickstart only point at things that exist: files, CLI commands, scripts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bottle_mcp.cli import COMMANDS

from ..conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Pages other parts of the project own; they may not be in every checkout of this branch yet.
OWNED_ELSEWHERE = {"docs/security.md", "docs/benchmarks.md"}


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", prose(page.read_text())):
        path = (page.parent / target).resolve()
        rel = path.relative_to(REPO).as_posix()
        if rel in OWNED_ELSEWHERE:
            continue
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "docs" / "quickstart.md"], ids=lambda p: p.name)
def test_every_command_the_pages_mention_exists(page: Path) -> None:
    text = page.read_text()
    # `bottle-mcp CMD` in code spans, and command lines in code blocks.
    mentioned = re.findall(r"`(?:\.venv/bin/)?bottle-mcp ([a-z][a-z-]*)", text)
    mentioned += re.findall(r"^(?:\S*/)?bottle-mcp ([a-z][a-z-]*)", text, re.MULTILINE)
    assert mentioned
    for sub in mentioned:
        assert sub in COMMANDS, f"{page.name} mentions `bottle-mcp {sub}`, which is not a command"
    for script in re.findall(r"(scripts/[\w.-]+\.sh)", text):
        assert (REPO / script).is_file(), f"{page.name} mentions {script}"


def test_readme_keeps_the_demo_and_test_commands() -> None:
    text = (REPO / "README.md").read_text()
    assert "\nscripts/demo.sh\n" in text
    assert "\nscripts/test.sh\n" in text
