"""Kept bottles without an engine: durations, leases, records and deadlines in names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bottle_mcp.backends.docker.keeper import deadline_of, reaper_name
from bottle_mcp.backends.fake import FakeBackend, FakeWorld
from bottle_mcp.errors import ManifestError
from bottle_mcp.keep import (
    BottleRecord,
    JobRecord,
    describe_left,
    find_job,
    iso,
    lease_holder,
    refresh_interval,
    release_lease,
    take_lease,
    write_record,
)
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import load_manifest, parse_duration
from bottle_mcp.models import BottleSpec

from ..conftest import ManifestFactory

BOTTLE = '[bottles.offline]\nimage = "bottle-mcp/worker:latest"\n'
AGENT = '[agents.worker]\nbottle = "offline"\ncommand = ["true"]\n'


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("20s", 20), ("90m", 5400), ("1h", 3600), ("2d", 172800)])
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_keep_for_names_the_setting_and_how_to_write_it(write_manifest: ManifestFactory) -> None:
    with pytest.raises(ManifestError, match=r"keep_for.*'20s', '30m', '1h'"):
        load_manifest(write_manifest('[host]\nkeep_for = "soon"\n' + BOTTLE + AGENT))
    with pytest.raises(ManifestError, match="at most '7d'"):
        load_manifest(write_manifest('[host]\nkeep_for = "8d"\n' + BOTTLE + AGENT))
    host = load_manifest(write_manifest(BOTTLE + AGENT)).manifest.host
    assert (host.keep_for, host.on_exit) == ("1h", "keep")


def test_a_lease_is_exclusive_and_says_who_holds_it() -> None:
    fd = take_lease("b-1", "host/boot/42/7")
    assert fd is not None
    assert take_lease("b-1", "someone else") is None  # another open file: refused, even in this process
    assert lease_holder("b-1") == "host/boot/42/7"
    os.close(fd)  # what the kernel does when the holder dies, however it dies
    assert lease_holder("b-1") is None
    again = take_lease("b-1", "next")
    assert again is not None
    release_lease(again, "b-1")
    assert lease_holder("b-1") is None


@pytest.mark.anyio
async def test_records_keep_the_plan_and_find_a_job_by_its_id(write_manifest: ManifestFactory) -> None:
    backend = FakeBackend(Instance.current(), FakeWorld())
    lm = load_manifest(write_manifest(BOTTLE + AGENT))
    plan = await backend.prepare(BottleSpec(manifest=lm, agent="worker"))
    job = JobRecord(
        job_id="j-1", kind="exec", command=["sh"], workdir="/", timeout_s=5, started_at="2026-01-01T00:00:00Z", pid=9
    )
    write_record(
        BottleRecord(
            bottle_id="b-2", manifest="/m.toml", manifest_sha256="x", uid=os.getuid(), plan=plan, launched_by="o"
        )
    )
    assert find_job("j-1") is None
    rec = BottleRecord(
        bottle_id="b-2",
        manifest="/m.toml",
        manifest_sha256="x",
        uid=os.getuid(),
        plan=plan,
        jobs=[job],
        launched_by="o",
    )
    write_record(rec)
    found = find_job("j-1")
    assert found is not None and found[0].bottle_id == "b-2" and found[1].pid == 9
    assert found[0].plan == plan
    folder = Path(os.environ["XDG_STATE_HOME"]) / "bottle-mcp" / "bottles"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "b-2.json").stat().st_mode & 0o777) == "0o600"


def test_the_deadline_lives_in_the_reapers_name() -> None:
    assert deadline_of("/" + reaper_name("b-12ab", 1796000000)) == 1796000000
    assert deadline_of("bottle-mcp-worker-b-12ab") is None
    assert deadline_of("bottle-mcp-keep-b-12ab-soon") is None


def test_time_left_and_refresh_interval() -> None:
    assert describe_left(iso(time.time() + 125)) in {"2m03s left", "2m04s left", "2m05s left"}
    assert describe_left(iso(time.time() - 10)) == "0s left"
    assert refresh_interval(20) == 5 and refresh_interval(3600) == 60 and refresh_interval(2) == 1
