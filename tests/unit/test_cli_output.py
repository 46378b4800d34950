"""Long CLI operations: a bar on a terminal, nothing but JSON when asked for JSON; serve --http stays on loopback."""

from __future__ import annotations

import io
import json

import pytest

from bottle_mcp.cli import main, parse_http_address
from bottle_mcp.errors import BottleError
from bottle_mcp.progress import Bar


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_counts_on_a_terminal_and_clears_its_line() -> None:
    out = FakeTty()
    with Bar(4, "cleanup", stream=out, enabled=True) as bar:
        bar.advance(1, "containers")
        bar.advance(2)
        assert "3/4" in out.getvalue() and "containers" in out.getvalue()
    assert out.getvalue().endswith("\r\x1b[2K")


def test_a_bar_draws_nothing_when_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    with Bar(4, "cleanup", stream=out) as bar:
        bar.advance(4, "done")
    assert out.getvalue() == ""


def test_cleanup_json_prints_only_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", "fake", "cleanup", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["dry_run"] is False
    assert report["failed"] == []
    assert "\r" not in captured.err


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:8765", ("127.0.0.1", 8765)), ("localhost:80", ("127.0.0.1", 80)), ("[::1]:9000", ("::1", 9000))],
)
def test_http_serving_accepts_loopback_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_http_address(value) == expected


@pytest.mark.parametrize("value", ["0.0.0.0:8765", "192.168.1.10:80", "example.org:80", "127.0.0.1", "127.0.0.1:0"])
def test_http_serving_refuses_anything_but_a_loopback_address_and_port(value: str) -> None:
    with pytest.raises(BottleError, match="--http"):
        parse_http_address(value)
