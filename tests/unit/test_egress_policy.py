"""The egress policy as the manifest states it and the proxy receives it (no engine needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bottle_mcp.backends.docker.egress import (
    LOG_PREFIX,
    allow_rules,
    bottle_env,
    merge_records,
    network_plan,
    parse_decisions,
    plan_warnings,
    policy,
)
from bottle_mcp.errors import ManifestError
from bottle_mcp.manifest import LoadedManifest, load_manifest

from ..conftest import ManifestFactory

EGRESS = """\
[bottles.net]
image = "bottle-mcp/worker:latest"
network = "egress"

[bottles.net.egress]
allow = ["api.example.com", "*.pkg.example.org:443", "api.example.com:8443"]
{extra}

[agents.worker]
bottle = "net"
command = ["true"]
credentials = ["EGRESS_TEST_KEY"]
"""


def load(write_manifest: ManifestFactory, extra: str = "") -> tuple[Path, LoadedManifest]:
    path = write_manifest(EGRESS.format(extra=extra))
    return path, load_manifest(path)


def test_allow_entries_become_one_rule_per_name_with_default_ports() -> None:
    assert allow_rules(["api.example.com", "*.pkg.example.org:443", "api.example.com:8443"]) == [
        {"pattern": "api.example.com", "ports": [443, 80, 8443]},
        {"pattern": "*.pkg.example.org", "ports": [443]},
    ]


def test_plan_names_intercepted_and_passthrough_hosts_and_credential_destinations(
    write_manifest: ManifestFactory,
) -> None:
    _, lm = load(
        write_manifest,
        'passthrough = ["mirror.pkg.example.org"]\n'
        '[bottles.net.egress.credentials]\nEGRESS_TEST_KEY = ["api.example.com"]',
    )
    bottle = lm.manifest.bottles["net"]
    plan = network_plan(bottle)
    assert plan.effective == "egress-proxy"
    assert plan.intercepted == ["api.example.com", "*.pkg.example.org"]
    assert plan.passthrough == ["mirror.pkg.example.org"]
    assert plan.credential_hosts == {"EGRESS_TEST_KEY": ["api.example.com"]}
    assert any("passed through unopened" in w for w in plan_warnings(bottle, []))


def test_a_passthrough_host_must_be_allowed(write_manifest: ManifestFactory) -> None:
    path = write_manifest(EGRESS.format(extra='passthrough = ["other.example.net"]'))
    with pytest.raises(ManifestError, match=r"egress.passthrough\[0\]: 'other.example.net' is not in egress.allow"):
        load_manifest(path)


def test_a_missing_upstream_ca_file_is_named(write_manifest: ManifestFactory) -> None:
    path = write_manifest(EGRESS.format(extra='upstream_ca = "no-such-ca.pem"'))
    with pytest.raises(ManifestError, match=r"egress.upstream_ca: file .*no-such-ca.pem.* does not exist"):
        load_manifest(path)


def test_a_stand_in_credential_is_not_in_the_proxys_configuration_at_all(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-" + "x" * 40
    monkeypatch.setenv("EGRESS_TEST_KEY", secret)
    _, lm = load(write_manifest, '[bottles.net.egress.credentials]\nEGRESS_TEST_KEY = ["api.example.com"]')
    pol = policy(lm, lm.manifest.bottles["net"], ["EGRESS_TEST_KEY"])
    assert pol["credentials"] == []
    assert secret[6:] not in json.dumps(pol)


def test_the_proxy_gets_a_prefix_and_hash_of_a_real_credential_never_the_value(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-" + "x" * 40
    monkeypatch.setenv("EGRESS_TEST_KEY", secret)
    path = write_manifest(
        EGRESS.format(extra='[bottles.net.egress.credentials]\nEGRESS_TEST_KEY = ["api.example.com"]').replace(
            'network = "egress"\n', 'network = "egress"\nreal_credentials = ["EGRESS_TEST_KEY"]\n'
        )
    )
    lm = load_manifest(path)
    bottle = lm.manifest.bottles["net"]
    pol = policy(lm, bottle, ["EGRESS_TEST_KEY"])
    text = json.dumps(pol)
    assert secret not in text
    (cred,) = pol["credentials"]
    assert cred["prefix"] == secret[:6] and cred["length"] == len(secret)
    assert cred["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert cred["hosts"] == ["api.example.com"]


def test_a_short_real_credential_is_warned_about_a_stand_in_is_not(
    write_manifest: ManifestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EGRESS_TEST_KEY", "short")
    _, lm = load(write_manifest)
    assert plan_warnings(lm.manifest.bottles["net"], ["EGRESS_TEST_KEY"]) == []
    path = write_manifest(
        EGRESS.format(extra="").replace(
            'network = "egress"\n', 'network = "egress"\nreal_credentials = ["EGRESS_TEST_KEY"]\n'
        )
    )
    lm = load_manifest(path)
    bottle = lm.manifest.bottles["net"]
    assert any("shorter than" in w for w in plan_warnings(bottle, ["EGRESS_TEST_KEY"]))
    assert policy(lm, bottle, ["EGRESS_TEST_KEY"])["credentials"] == []


def test_trust_variables_point_into_the_writable_home() -> None:
    env = bottle_env("/home/bottle")
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://127.0.0.1:3128"
    for key in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"):
        assert env[key] == "/home/bottle/.bottle-mcp/egress-ca-bundle.pem"
    assert env["NODE_EXTRA_CA_CERTS"] == "/home/bottle/.bottle-mcp/egress-ca.pem"


def test_log_lines_are_parsed_and_other_output_is_ignored() -> None:
    good = {"time": "t", "action": "deny", "kind": "CONNECT", "host": "x.test", "port": 443, "reason": "r"}
    text = "\n".join(
        [
            "mitmproxy warning: something",
            LOG_PREFIX + json.dumps(good),
            LOG_PREFIX + "{not json",
            LOG_PREFIX + json.dumps({"action": "maybe"}),
        ]
    )
    (decision,) = parse_decisions(text)
    assert (decision.action, decision.host, decision.port) == ("deny", "x.test", 443)


def test_denials_are_aggregated_fields_clipped_and_rotated_allowed_decisions_counted() -> None:
    allowed = [
        {
            "time": f"2026-01-01T00:00:0{n}Z",
            "action": "allow",
            "kind": "HTTP",
            "host": "a.test",
            "port": 80,
            "reason": "allow-list",
            "path": "/p" + "x" * 500,
            "seq": n,
        }
        for n in (3, 4)
    ]
    log = "\n".join(LOG_PREFIX + json.dumps(a) for a in allowed)
    denied = {
        "time": "2026-01-01T00:00:03Z",
        "action": "deny",
        "kind": "HTTP",
        "host": "b.test",
        "port": 80,
        "reason": "r" * 5000,
        "seq": 1,
    }
    counts = json.dumps({"counts": {"1": [700, "2026-01-01T00:00:09Z"]}, "overflow": 5, "total": 705})
    records = merge_records(log, json.dumps(denied) + "\n{broken", counts)
    assert [d.action for d in records.decisions] == ["allow", "deny", "allow"]
    deny = records.decisions[1]
    assert (deny.count, deny.last_time, deny.lengths["reason"]) == (700, "2026-01-01T00:00:09Z", 5000)
    assert len(deny.reason) <= 203 and len(records.decisions[0].path or "") <= 203
    assert records.decisions[0].lengths["path"] == 502
    assert records.denied == 705
    assert records.dropped == 2 + 5  # allowed 1 and 2 rotated out of the log; 5 denials only counted
