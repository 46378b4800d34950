"""Manifest validation: every problem names the file, the TOML path and a fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bottle_mcp.errors import ManifestError
from bottle_mcp.manifest import (
    LoadedManifest,
    Manifest,
    dump_manifest,
    format_size,
    load_manifest,
    manifest_json_schema,
    parse_manifest,
    parse_size,
    toml_path,
)

from ..conftest import REPO, ManifestFactory

BOTTLE = '[bottles.offline]\nimage = "bottle-mcp/worker:latest"\n'
AGENT = '[agents.worker]\nbottle = "offline"\ncommand = ["true"]\n'


def manifest_error(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return str(info.value)


def assert_problem(message: str, path: Path, where: str, fix: str) -> None:
    """The message names the file, the TOML path of the problem, and contains the fix."""
    lines = [line for line in message.splitlines() if f"{path}: {where}: " in line]
    assert lines, f"no problem at {where!r} in:\n{message}"
    assert any(fix in line for line in lines), f"no fix {fix!r} at {where!r} in:\n{message}"


# -- single-table problems, each with its path and fix -----------------------------------------------

CASES = [
    pytest.param(
        BOTTLE + AGENT + 'skills = ["review", "bad/name"]\n',
        "agents.worker.skills[1]",
        "'bad/name' is not a plain name: letters, digits, '.', '_' or '-'",
        id="skill-name-pattern",
    ),
    pytest.param(
        BOTTLE + AGENT + "colour = 'blue'\n",
        "agents.worker.colour",
        "unknown key 'colour'; check its spelling",
        id="unknown-agent-key",
    ),
    pytest.param(
        "colour = 'blue'\n" + BOTTLE + AGENT,
        "colour",
        "unknown key 'colour'; check its spelling",
        id="unknown-top-level-key",
    ),
    pytest.param(
        BOTTLE + "[bottles.offline.resources]\nswap = '1g'\n" + AGENT,
        "bottles.offline.resources.swap",
        "unknown key 'swap'; check its spelling",
        id="unknown-nested-key",
    ),
    pytest.param(
        BOTTLE + 'memory = "1g"\n' + AGENT,
        "bottles.offline.memory",
        "'memory' is not allowed here; it belongs in [bottles.NAME.resources]",
        id="misplaced-key-says-where-it-belongs",
    ),
    pytest.param(
        '[bottles.Offline]\nimage = "x"\n' + AGENT,
        "bottles.Offline",
        "'Offline' is not a lower-case name",
        id="bottle-name-pattern",
    ),
    pytest.param(
        BOTTLE + '[agents."my agent"]\nbottle = "offline"\ncommand = ["true"]\n',
        'agents."my agent"',
        "'my agent' is not a lower-case name",
        id="agent-name-with-space-is-quoted",
    ),
    pytest.param(
        BOTTLE + AGENT + 'credentials = ["1BAD"]\n',
        "agents.worker.credentials[0]",
        "'1BAD' is not an environment variable name such as ANTHROPIC_API_KEY",
        id="credential-name-pattern",
    ),
    pytest.param(
        BOTTLE + 'user = "0:0"\n' + AGENT,
        "bottles.offline.user",
        "use a non-zero uid such as '1000:1000'",
        id="root-uid-refused",
    ),
    pytest.param(
        BOTTLE + 'user = "0"\n' + AGENT,
        "bottles.offline.user",
        "never run as root",
        id="root-uid-without-gid-refused",
    ),
    pytest.param(
        BOTTLE + 'user = "root"\n' + AGENT,
        "bottles.offline.user",
        "'root' is not a numeric 'uid' or 'uid:gid'",
        id="user-name-instead-of-uid",
    ),
    pytest.param(
        BOTTLE + 'env = { HOME = "/root", LANG = "C" }\n' + AGENT,
        "bottles.offline.env",
        "HOME are set by the server; remove them from env",
        id="reserved-env-name",
    ),
    pytest.param(
        BOTTLE + 'env = { "BAD-NAME" = "x" }\n' + AGENT,
        "bottles.offline.env.BAD-NAME",
        "'BAD-NAME' is not an environment variable name",
        id="env-name-pattern",
    ),
    pytest.param(
        BOTTLE + AGENT + 'prompt = "a"\nprompt_file = "prompt.md"\n',
        "agents.worker",
        "set prompt or prompt_file, not both",
        id="prompt-and-prompt-file",
    ),
    pytest.param(
        '[bottles.offline]\nruntime = "runc"\n' + AGENT,
        "bottles.offline",
        "set either image = 'name:tag' or a [build] table",
        id="neither-image-nor-build",
    ),
    pytest.param(
        BOTTLE + 'network = "bridge"\n' + AGENT,
        "bottles.offline.network",
        "'bridge' is not allowed: input should be 'none' or 'egress'",
        id="network-mode-literal",
    ),
    pytest.param(
        BOTTLE + 'runtime = "kata"\n' + AGENT,
        "bottles.offline.runtime",
        "'kata' is not allowed: input should be 'auto', 'runc' or 'runsc'",
        id="runtime-literal",
    ),
    pytest.param(
        BOTTLE + 'network = "egress"\negress = { allow = ["Example.COM"] }\n' + AGENT,
        "bottles.offline.egress.allow[0]",
        "'Example.COM' is not a lower-case host name",
        id="egress-host-must-be-lower-case",
    ),
    pytest.param(
        BOTTLE + "[bottles.offline.resources]\nmemory = 'lots'\n" + AGENT,
        "bottles.offline.resources.memory",
        "write it like '512m', '2g' or a number of bytes",
        id="size-not-parsable",
    ),
    pytest.param(
        BOTTLE + "[bottles.offline.resources]\nmemory = -5\n" + AGENT,
        "bottles.offline.resources.memory",
        "size must be positive",
        id="negative-size",
    ),
    pytest.param(
        BOTTLE + "[bottles.offline.resources]\npids = 1\n" + AGENT,
        "bottles.offline.resources.pids",
        "greater than or equal to 16",
        id="pids-too-low",
    ),
    pytest.param(
        "[host]\noutput_cap = '1g'\n" + BOTTLE + AGENT,
        "host.output_cap",
        "output caps are at most 64m",
        id="output-cap-too-large",
    ),
    pytest.param(
        "version = 2\n" + BOTTLE + AGENT,
        "version",
        "2 is not allowed: input should be 1",
        id="unknown-version",
    ),
    pytest.param(
        AGENT,
        "bottles",
        "this key is required; add it",
        id="no-bottles",
    ),
    pytest.param(
        BOTTLE + '[agents.worker]\nbottle = "offline"\n',
        "agents.worker.command",
        "this key is required; add it",
        id="agent-without-command",
    ),
    pytest.param(
        BOTTLE + AGENT.replace("offline", "elsewhere"),
        "agents.worker.bottle",
        "no bottle named 'elsewhere'; known bottles: offline",
        id="unknown-bottle-reference",
    ),
    pytest.param(
        BOTTLE + 'network = "egress"\n' + AGENT,
        "bottles.offline.egress.allow",
        "network = 'egress' needs at least one allowed host",
        id="egress-network-without-allow-list",
    ),
    pytest.param(
        BOTTLE + 'egress = { allow = ["pypi.org"] }\n' + AGENT,
        "bottles.offline.network",
        "set network = 'egress'",
        id="allow-list-on-offline-bottle",
    ),
    pytest.param(
        BOTTLE + AGENT + 'prompt_file = "missing.md"\n',
        "agents.worker.prompt_file",
        "create it or fix the path",
        id="missing-prompt-file",
    ),
    pytest.param(
        '[bottles.offline]\nbuild = { context = "ctx" }\n' + AGENT,
        "bottles.offline.build.context",
        "no Dockerfile in",
        id="build-context-that-does-not-exist",
    ),
    pytest.param(
        BOTTLE + '[[bottles.offline.ssh]]\nhost = "gh"\nhostname = "github.com"\nidentity_file = "keys/none"\n' + AGENT,
        "bottles.offline.ssh[0].identity_file",
        "does not exist; fix the path",
        id="missing-ssh-key-file",
    ),
    pytest.param(
        BOTTLE
        + '[[bottles.offline.git]]\nname = "origin"\nupstream = "ssh://git@example.org/o/r.git"\n'
        + 'identity_file = "keys/none"\n'
        + AGENT,
        "bottles.offline.git[0].identity_file",
        "does not exist; fix the path",
        id="missing-git-key-file",
    ),
    pytest.param(
        BOTTLE
        + '[[bottles.offline.git]]\nname = "origin"\nupstream = "https://example.org/o/r.git"\n'
        + 'identity_file = "key"\n'
        + AGENT,
        "bottles.offline.git[0].upstream",
        "write it like 'ssh://git@host:22/owner/repo.git'",
        id="git-upstream-not-ssh",
    ),
    pytest.param(
        BOTTLE
        + '[[bottles.offline.git]]\nname = "origin"\nupstream = "ssh://git@example.org/o/r.git;rm"\n'
        + 'identity_file = "key"\n'
        + AGENT,
        "bottles.offline.git[0].upstream",
        "characters that are not allowed",
        id="git-upstream-with-shell-characters",
    ),
]


@pytest.mark.parametrize(("text", "where", "fix"), CASES)
def test_invalid_manifest_names_file_toml_path_and_fix(
    write_manifest: ManifestFactory, text: str, where: str, fix: str
) -> None:
    path = write_manifest(text)
    (path.parent / "key").write_text("not really a key\n")
    message = manifest_error(path)
    assert message.startswith(f"manifest {str(path)!r} is invalid")
    assert_problem(message, path, where, fix)


def test_every_problem_is_reported_at_once_with_a_count(write_manifest: ManifestFactory) -> None:
    path = write_manifest(BOTTLE + 'user = "0"\ncolour = 1\n' + AGENT + 'skills = ["x/y"]\n')
    message = manifest_error(path)
    assert "(3 problems)" in message
    assert_problem(message, path, "bottles.offline.user", "root")
    assert_problem(message, path, "bottles.offline.colour", "check its spelling")
    assert_problem(message, path, "agents.worker.skills[0]", "is not a plain name")


def test_toml_syntax_error_names_file_position_and_fix(write_manifest: ManifestFactory) -> None:
    path = write_manifest("[bottles.offline\nimage = 1\n")
    message = manifest_error(path)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 1" in message
    assert "Fix the syntax" in message


def test_manifest_that_is_not_utf8_is_refused_with_its_name(write_manifest: ManifestFactory) -> None:
    path = write_manifest("")
    path.write_bytes(b"# \xff\xfe\n" + (BOTTLE + AGENT).encode())
    message = manifest_error(path)
    assert str(path) in message
    assert "not UTF-8" in message


def test_missing_manifest_file_says_how_to_pass_one(tmp_path: Path) -> None:
    message = manifest_error(tmp_path / "nowhere.toml")
    assert str(tmp_path / "nowhere.toml") in message
    assert "--manifest" in message


def test_duplicate_git_names_point_at_the_second_entry(write_manifest: ManifestFactory) -> None:
    git = '[[bottles.offline.git]]\nname = "origin"\nupstream = "ssh://git@{host}/o/r.git"\nidentity_file = "key"\n'
    path = write_manifest(BOTTLE + git.format(host="a.example.org") + git.format(host="b.example.org") + AGENT)
    (path.parent / "key").write_text("key\n")
    message = manifest_error(path)
    assert "(1 problem)" in message
    assert_problem(message, path, "bottles.offline.git[1].name", "'origin' is already used by git[0]")


@pytest.mark.parametrize(
    ("upstream", "ssh_port"),
    [
        pytest.param("ssh://git@github.com/o/r.git", 22, id="default-ports"),
        pytest.param("ssh://git@GitHub.com:22/o/r.git", 22, id="case-and-explicit-port"),
        pytest.param("ssh://git@github.com:2222/o/r.git", 2222, id="same-custom-port"),
    ],
)
def test_git_upstream_reachable_through_an_ssh_entry_is_refused(
    write_manifest: ManifestFactory, upstream: str, ssh_port: int
) -> None:
    path = write_manifest(
        BOTTLE
        + f'[[bottles.offline.ssh]]\nhost = "gh"\nhostname = "GitHub.com"\nport = {ssh_port}\nidentity_file = "key"\n'
        + f'[[bottles.offline.git]]\nname = "origin"\nupstream = "{upstream}"\nidentity_file = "key"\n'
        + AGENT
    )
    (path.parent / "key").write_text("key\n")
    message = manifest_error(path)
    assert_problem(message, path, "bottles.offline.git[0].upstream", f"github.com:{ssh_port} is also reachable")
    assert "Remove one of the two entries" in message


def test_git_upstream_on_another_port_than_the_ssh_entry_is_allowed(write_manifest: ManifestFactory) -> None:
    path = write_manifest(
        BOTTLE
        + '[[bottles.offline.ssh]]\nhost = "gh"\nhostname = "github.com"\nport = 2222\nidentity_file = "key"\n'
        + '[[bottles.offline.git]]\nname = "origin"\nupstream = "ssh://git@github.com/o/r.git"\n'
        + 'identity_file = "key"\n'
        + AGENT
    )
    (path.parent / "key").write_text("key\n")
    lm = load_manifest(path)
    assert lm.manifest.bottles["offline"].git[0].host_port == ("github.com", 22)


def test_build_context_without_dockerfile_is_refused(write_manifest: ManifestFactory) -> None:
    path = write_manifest('[bottles.offline]\nbuild = { context = "ctx" }\n' + AGENT)
    (path.parent / "ctx").mkdir()
    (path.parent / "ctx" / "Containerfile").write_text("FROM scratch\n")
    message = manifest_error(path)
    assert_problem(message, path, "bottles.offline.build.context", "fix the folder")
    assert str(path.parent / "ctx") in message


def test_build_context_with_its_dockerfile_loads_and_names_a_project_image(write_manifest: ManifestFactory) -> None:
    path = write_manifest('[bottles.offline]\nbuild = { context = "ctx", dockerfile = "Containerfile" }\n' + AGENT)
    (path.parent / "ctx").mkdir()
    (path.parent / "ctx" / "Containerfile").write_text("FROM scratch\n")
    lm = load_manifest(path)
    assert lm.image_for("offline") == "bottle-mcp/offline:latest"


def test_existing_prompt_file_and_key_files_resolve_relative_to_the_manifest(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    path = write_manifest(
        BOTTLE
        + '[[bottles.offline.ssh]]\nhost = "box"\nhostname = "box.example.org"\nidentity_file = "keys/id"\n'
        + AGENT
        + 'prompt_file = "prompts/p.md"\n'
    )
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("key\n")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.md").write_text("Be brief.\n")
    lm = load_manifest(path)
    assert lm.resolve("keys/id") == tmp_path / "keys" / "id"
    assert lm.resolve("/etc/hostname") == Path("/etc/hostname")


def test_sha256_changes_when_the_manifest_bytes_change(write_manifest: ManifestFactory) -> None:
    first = load_manifest(write_manifest(BOTTLE + AGENT))
    second = load_manifest(write_manifest(BOTTLE + AGENT + "# a comment\n"))
    assert first.sha256 != second.sha256
    assert first.manifest == second.manifest


# -- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("512m", 512 * 1024**2),
        ("512M", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1.5g", 3 * 1024**3 // 2),
        ("1GiB", 1024**3),
        ("64kb", 64 * 1024),
        (" 1 t ", 1024**4),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_parse_size_understands_units_and_plain_bytes(raw: str | int, expected: int) -> None:
    assert parse_size(raw) == expected


@pytest.mark.parametrize("raw", ["lots", "1x", "-1m", "m", "", "1.2.3g", 0, -1])
def test_parse_size_refuses_what_is_not_a_positive_size(raw: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(raw)


@pytest.mark.parametrize("raw", ["0", "0m", "0.0001k"])
def test_parse_size_refuses_sizes_that_round_to_zero_bytes(raw: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(raw)


def test_zero_memory_limit_is_refused(write_manifest: ManifestFactory) -> None:
    path = write_manifest(BOTTLE + "[bottles.offline.resources]\nmemory = '0'\n" + AGENT)
    assert_problem(manifest_error(path), path, "bottles.offline.resources.memory", "size")


@pytest.mark.parametrize("n", [1, 1023, 1024, 512 * 1024**2, 3 * 1024**3, 1536 * 1024**2])
def test_format_size_round_trips_through_parse_size(n: int) -> None:
    assert parse_size(format_size(n)) == n


# -- the example manifests -------------------------------------------------------------------------

EXAMPLES = [REPO / "manifests" / "example.toml", REPO / "bottle_mcp" / "data" / "example.toml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=["manifests", "package-data"])
def test_example_manifest_defines_worker_in_an_offline_bottle(path: Path) -> None:
    lm = load_manifest(path)
    worker = lm.manifest.agents["worker"]
    bottle = lm.manifest.bottles[worker.bottle]
    assert bottle.network == "none"
    assert bottle.egress is None or not bottle.egress.allow
    assert bottle.build is not None
    assert (lm.resolve(bottle.build.context) / bottle.build.dockerfile).is_file()


def test_both_example_manifests_differ_only_in_the_build_context_path() -> None:
    repo_copy, packaged = (load_manifest(p) for p in EXAMPLES)
    a = repo_copy.manifest.model_dump()
    b = packaged.manifest.model_dump()
    contexts = []
    for dumped, lm in ((a, repo_copy), (b, packaged)):
        for bottle in dumped["bottles"].values():
            if bottle["build"] is not None:
                contexts.append(lm.resolve(bottle["build"].pop("context")).resolve())
    assert a == b
    assert len(contexts) == 2
    assert contexts[0] == contexts[1]


@pytest.mark.parametrize("path", sorted((REPO / "manifests").glob("*.toml")), ids=lambda p: Path(str(p)).name)
def test_every_shipped_manifest_loads(path: Path) -> None:
    lm = load_manifest(path)
    assert lm.manifest.agents


# -- round trip and schema -------------------------------------------------------------------------

RICH = """\
[host]
roots = ["data"]
output_cap = "2m"
max_bottles = 4

[bottles.net]
image = "bottle-mcp/worker:latest"
runtime = "runc"
network = "egress"
egress = { allow = ["pypi.org", "*.github.com:443"] }
env = { LANG = "C.UTF-8" }
user = "1234:1234"
read_only_root = false

[bottles.net.resources]
cpus = 0.5
memory = "256m"
pids = 64

[[bottles.net.ssh]]
host = "box"
hostname = "box.example.org"
port = 2222
identity_file = "key"
known_host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDummy"

[[bottles.net.git]]
name = "origin"
upstream = "ssh://git@example.org/o/r.git"
identity_file = "key"

[agents.coder]
bottle = "net"
description = "Writes code."
command = ["claude", "-p", "--output-format", "json"]
prompt = "Be careful."
skills = ["review"]
credentials = ["ANTHROPIC_API_KEY"]
"""


def test_dump_manifest_round_trips(write_manifest: ManifestFactory) -> None:
    path = write_manifest(RICH)
    (path.parent / "key").write_text("key\n")
    original = load_manifest(path)
    again = parse_manifest(dump_manifest(original.manifest).encode(), path)
    assert again.manifest == original.manifest


def test_dump_manifest_leaves_defaults_out(write_manifest: ManifestFactory) -> None:
    lm = load_manifest(write_manifest(BOTTLE + AGENT))
    assert tomllib.loads(dump_manifest(lm.manifest)) == {
        "bottles": {"offline": {"image": "bottle-mcp/worker:latest"}},
        "agents": {"worker": {"bottle": "offline", "command": ["true"]}},
    }


def test_json_schema_describes_the_manifest() -> None:
    schema = manifest_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["title"] == "bottle-mcp manifest"
    assert set(schema["properties"]) == set(Manifest.model_fields)
    assert schema["additionalProperties"] is False
    agent = schema["$defs"]["AgentDef"]["properties"]
    assert "description" in agent["credentials"]


def test_toml_path_formats_indices_and_quotes_odd_keys() -> None:
    assert toml_path(("agents", "worker", "skills", 1)) == "agents.worker.skills[1]"
    assert toml_path(("bottles", "a.b", "env")) == 'bottles."a.b".env'
    assert toml_path(()) == "(top level)"


def test_loaded_manifest_host_roots_default_to_the_given_folder(
    write_manifest: ManifestFactory, tmp_path: Path
) -> None:
    lm: LoadedManifest = load_manifest(write_manifest(BOTTLE + AGENT))
    assert lm.host_roots(tmp_path / "start") == [(tmp_path / "start").resolve()]
    with_roots = load_manifest(write_manifest('[host]\nroots = ["a", "/srv"]\n' + BOTTLE + AGENT))
    assert with_roots.host_roots(tmp_path) == [(tmp_path / "a").resolve(), Path("/srv").resolve()]


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_git_upstream_with_a_bad_port_is_a_manifest_error(write_manifest: ManifestFactory, port: str) -> None:
    path = write_manifest(
        BOTTLE
        + f'[[bottles.offline.git]]\nname = "origin"\nupstream = "ssh://git@example.org:{port}/o/r.git"\n'
        + 'identity_file = "key"\n'
        + AGENT
    )
    (path.parent / "key").write_text("key\n")
    assert_problem(manifest_error(path), path, "bottles.offline.git[0].upstream", "port")


@pytest.mark.parametrize("host", ["pypi.org:99999", "pypi.org:0"])
def test_egress_entry_with_an_impossible_port_is_refused(write_manifest: ManifestFactory, host: str) -> None:
    path = write_manifest(BOTTLE + f'network = "egress"\negress = {{ allow = ["{host}"] }}\n' + AGENT)
    assert_problem(manifest_error(path), path, "bottles.offline.egress.allow[0]", "port")
