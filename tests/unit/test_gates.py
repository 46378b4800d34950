"""The gate's pieces that need no engine: redaction, bottle files and host key pins."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bottle_mcp.backends.docker import gates
from bottle_mcp.errors import PlanError
from bottle_mcp.manifest import LoadedManifest, parse_manifest

GATE_IMAGE_DIR = Path(gates.__file__).resolve().parents[2] / "data" / "images" / "git-gate"


def _load(name: str) -> ModuleType:
    """The gate image's own modules: what is tested here needs only the standard library."""
    spec = importlib.util.spec_from_file_location(f"gate_{name}", GATE_IMAGE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"gate_{name}"] = module
    spec.loader.exec_module(module)
    return module


scan = _load("scan")
gate = _load("gate")


@pytest.mark.parametrize("ref", ["refs/heads/main", "refs/heads/feature/x-1.2_b", "refs/tags/v1.0.0"])
def test_plain_branch_and_tag_names_pass_the_gate(ref: str) -> None:
    assert gate.valid_ref(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/-x",
        "refs/heads/--upload-pack=touch",
        "refs/heads/$(id)",
        "refs/heads/a;id",
        "refs/heads/a b",
        "refs/heads/.hidden",
        "refs/heads/a..b",
        "refs/heads/x.lock",
        "refs/heads/x/",
        "refs/heads/",
        "refs/notes/commits",
        "refs/heads/caf\u00e9",
        "refs/heads/x\n",
        "HEAD",
    ],
)
def test_ref_names_that_could_be_read_as_anything_else_are_refused(ref: str) -> None:
    assert not gate.valid_ref(ref)


def test_redaction_keeps_a_hint_and_never_the_secret() -> None:
    key = "sk-ant-api03-" + "x" * 95
    assert scan.redact(key) == f"sk-a... ({len(key)} characters, redacted)"
    assert scan.redact("hunter2hunter2") == "(14 characters, redacted)"


def test_the_gates_own_rules_catch_keys_detect_secrets_does_not_know() -> None:
    line = 'token = "sk-ant-api03-' + "Ab1_-" * 19 + 'AA"'
    hits = [(name, m.group(0)) for name, rx in scan.EXTRA_RULES for m in rx.finditer(line)]
    assert [name for name, _ in hits] == ["Anthropic API key"]


def _fake_openssh_key(cipher: bytes, kdf: bytes) -> str:
    """The header of an OpenSSH key file (cipher and kdf names), enough for the gate's checks."""
    head = b"openssh-key-v1\x00" + len(cipher).to_bytes(4, "big") + cipher + len(kdf).to_bytes(4, "big") + kdf
    body = base64.b64encode(head + b"\x00" * 48).decode()
    return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"


KEY = _fake_openssh_key(b"none", b"none")


def _loaded(tmp_path: Path, pin: str | None = None) -> LoadedManifest:
    (tmp_path / "key").write_text(KEY)
    pin_line = f'known_host_key = "{pin}"' if pin else ""
    text = f"""
[bottles.b]
image = "x"
[[bottles.b.git]]
name = "origin"
upstream = "ssh://git@git.example.com:2222/team/repo.git"
identity_file = "key"
{pin_line}
[[bottles.b.ssh]]
host = "box"
hostname = "box.example.com"
identity_file = "key"
[agents.a]
bottle = "b"
command = ["true"]
"""
    return parse_manifest(text.encode(), tmp_path / "m.toml")


def test_the_bottle_gets_remotes_and_hosts_that_lead_only_to_the_gate(tmp_path: Path) -> None:
    bottle = _loaded(tmp_path).manifest.bottles["b"]
    files = gates.bottle_files(bottle)
    assert "url = git://127.0.0.1:9418/origin.git" in files[".gitconfig"]
    assert "insteadOf = ssh://git@git.example.com:2222/team/repo.git" in files[".gitconfig"]
    assert "HostName 127.0.0.1\n\tPort 2200\n" in files[".ssh/config"]
    assert "IdentityFile none" in files[".ssh/config"]
    assert all("PRIVATE KEY" not in text for text in files.values())
    assert gates.forward_mappings(bottle) == ["9418:git.sock", "2200:ssh-0.sock", "2300:agent-0.sock"]
    assert any("'origin' has no known_host_key" in w for w in gates.plan_warnings(bottle))


@pytest.mark.parametrize("pin", ["ssh-ed25519", "ssh-ed25519 AAAA\\nbad.host ssh-rsa AAAA", "-oProxyCommand=x AAAA"])
def test_a_malformed_host_key_pin_is_refused_at_plan_time(tmp_path: Path, pin: str) -> None:
    lm = _loaded(tmp_path, pin)
    bottle = lm.manifest.bottles["b"]
    with pytest.raises(PlanError, match="known_host_key"):
        gates.validate(lm, bottle, "b")


def test_a_pinned_key_becomes_one_known_hosts_line_with_the_port(tmp_path: Path) -> None:
    pin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    lm = _loaded(tmp_path, pin)
    bottle = lm.manifest.bottles["b"]
    gates.validate(lm, bottle, "b")
    config = gates.gate_config(lm, bottle, [])
    assert config["git"][0]["known_hosts"] == [f"[git.example.com]:2222 {pin}"]
    assert config["git"][0]["key"] == KEY  # for the gate only, on the configure exec's stdin


@pytest.mark.parametrize(
    "key",
    [
        _fake_openssh_key(b"aes256-ctr", b"bcrypt"),
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        "ssh-ed25519 AAAA a public key, not a private one\n",
    ],
)
def test_a_key_the_gate_cannot_use_is_refused_at_plan_time(tmp_path: Path, key: str) -> None:
    lm = _loaded(tmp_path)
    (tmp_path / "key").write_text(key)
    with pytest.raises(PlanError, match="identity_file"):
        gates.validate(lm, lm.manifest.bottles["b"], "b")
