"""What the plan says about each credential, the stand-ins' shape, and launches the proxy cannot serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from bottle_mcp.backends.fake import FakeBackend
from bottle_mcp.credentials import bottle_values, credential_plans, make_stand_in
from bottle_mcp.errors import ManifestError, PlanError
from bottle_mcp.labels import Instance
from bottle_mcp.manifest import load_manifest
from bottle_mcp.service import BottleService, ServiceConfig

from ..conftest import ManifestFactory

pytestmark = pytest.mark.anyio

KEY = "sk-ant-api03-" + "Zq8_x-Lm3PvR" * 8 + "AA"

MANIFEST = """\
[bottles.net]
image = "bottle-mcp/worker:latest"
network = "egress"
{bottle_extra}

[bottles.net.egress]
allow = ["api.example.com", "pinned.example.com", "git.example.com"]
passthrough = ["pinned.example.com"]

[bottles.net.egress.credentials]
{credentials}

[agents.worker]
bottle = "net"
command = ["true"]
credentials = ["TEST_API_KEY"]
"""


def write(factory: ManifestFactory, credentials: str, bottle_extra: str = "") -> Path:
    return factory(MANIFEST.format(credentials=credentials, bottle_extra=bottle_extra))


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        (KEY, "sk-ant-api03-"),
        ("ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF2hJ4", "ghp_"),
        ("github_pat_11AAQWERTY0abcdefghij_" + "Xy9" * 20, "github_pat_"),
        ("xoxb-1234-5678-abcdEFGHijkl", "xoxb-"),
        ("0123456789abcdef0123456789abcdef", ""),
    ],
)
def test_a_stand_in_keeps_the_issuers_prefix_and_the_length_and_nothing_else(value: str, prefix: str) -> None:
    stand_ins = {make_stand_in(value) for _ in range(20)}
    assert len(stand_ins) == 20  # random every time
    for s in stand_ins:
        assert s.startswith(prefix) and len(s) == len(value) and s != value
        assert s[len(prefix) :] != value[len(prefix) :]


def test_a_short_value_gets_a_longer_stand_in_so_it_never_occurs_by_chance() -> None:
    s = make_stand_in("abc12345")
    assert len(s) >= 16 and "abc12345" not in s


def test_the_plan_says_where_the_real_value_goes_and_the_bottle_gets_only_a_stand_in(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    lm = load_manifest(write(write_manifest, 'TEST_API_KEY = { hosts = ["api.example.com"], body = true }'))
    plans, warnings = credential_plans(lm.manifest.bottles["net"], ["TEST_API_KEY"], {"TEST_API_KEY": KEY})
    [c] = plans
    assert (c.in_bottle, c.substituted_for, c.body, c.refused) == ("stand-in", ["api.example.com"], True, None)
    assert "headers and bodies" in c.note and warnings == []
    assert KEY not in c.model_dump_json()


async def _service(path: Path) -> BottleService:
    return BottleService(ServiceConfig(manifest_path=path, cwd=path.parent), FakeBackend(Instance.current()))


async def test_a_credential_for_a_passthrough_host_is_refused_unless_handed_over(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    path = write(write_manifest, 'TEST_API_KEY = ["api.example.com", "pinned.example.com"]')
    service = await _service(path)
    try:
        plan = await service.prepare("worker")
        [c] = plan.credentials
        assert c.refused is not None and "pinned.example.com" in c.refused and "real_credentials" in c.refused
        with pytest.raises(PlanError, match=r"launch refused: credential TEST_API_KEY is declared for pinned"):
            await service.launch(plan.plan_id)
        assert service.live_bottles == []
    finally:
        await service.aclose()

    path = write(
        write_manifest,
        'TEST_API_KEY = ["api.example.com", "pinned.example.com"]',
        bottle_extra='real_credentials = ["TEST_API_KEY"]',
    )
    service = await _service(path)
    try:
        plan = await service.prepare("worker")
        [c] = plan.credentials
        assert (c.in_bottle, c.refused, c.substituted_for) == ("real value", None, [])
        launched = await service.launch(plan.plan_id)
        assert "credential TEST_API_KEY (real value)" in launched.provisioned
        env, subs = bottle_values(plan.credentials, {"TEST_API_KEY": KEY})
        assert env == {"TEST_API_KEY": KEY} and subs == []
    finally:
        await service.aclose()


def test_stand_ins_are_fresh_per_launch_and_the_proxy_gets_the_pairs(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    lm = load_manifest(write(write_manifest, 'TEST_API_KEY = ["api.example.com"]'))
    plans, _ = credential_plans(lm.manifest.bottles["net"], ["TEST_API_KEY"], {"TEST_API_KEY": KEY})
    first, [sub] = bottle_values(plans, {"TEST_API_KEY": KEY})
    second, _ = bottle_values(plans, {"TEST_API_KEY": KEY})
    assert first["TEST_API_KEY"] != second["TEST_API_KEY"] and KEY not in (first | second).values()
    assert (sub.name, sub.stand_in, sub.value, sub.hosts) == (
        "TEST_API_KEY",
        first["TEST_API_KEY"],
        KEY,
        ["api.example.com"],
    )
    assert KEY not in repr(first)


def test_manifest_errors_name_the_credential_and_the_fix(write_manifest: ManifestFactory) -> None:
    path = write(write_manifest, 'TEST_API_KEY = ["elsewhere.example.org"]')
    with pytest.raises(ManifestError, match=r"credentials.TEST_API_KEY\[0\]: 'elsewhere.example.org' is not in egress"):
        load_manifest(path)
    path = write(write_manifest, 'TEST_API_KEY = ["api.example.com"]', bottle_extra='real_credentials = ["OTHER"]')
    with pytest.raises(ManifestError, match=r"real_credentials\[0\]: 'OTHER' is not among the credentials"):
        load_manifest(path)
    path = write(write_manifest, "TEST_API_KEY = { hosts = [] }")
    with pytest.raises(ManifestError, match="TEST_API_KEY"):
        load_manifest(path)
