#!/usr/bin/env bash
# The full test suite: set-up (idempotent), lint, types, then every test,
# the ones against the real Docker engine included.
#
#   scripts/test.sh [extra pytest arguments for the main run]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Labelled engine objects whose server is gone, as `bottle-mcp cleanup` sees them.
leftovers() {
  .venv/bin/bottle-mcp cleanup --dry-run --json \
    | .venv/bin/python -c 'import json, sys; [print(i["kind"], i["name"]) for i in json.load(sys.stdin)["removed"]]' \
    | sort
}

echo "[test] ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] shellcheck (the in-bottle programs)" >&2
shellcheck --shell=sh --severity=style bottle_mcp/data/inbottle/*.sh
echo "[test] mypy --strict" >&2
.venv/bin/mypy

before=$(leftovers)
echo "[test] pytest" >&2
.venv/bin/python -m pytest "$@"

# Nothing the suite started may outlive it: once every test server has exited,
# whatever it left would show up here as a new leftover.
leaked=$(comm -13 <(printf '%s\n' "$before") <(leftovers) | sed '/^$/d')
if [ -n "$leaked" ]; then
  echo "[test] these labelled engine objects outlived the test suite:" >&2
  echo "$leaked" >&2
  exit 1
fi
echo "[test] no labelled container, volume or network left behind" >&2

# The core flow again against the other ways people reach an engine: a second engine over
# TCP (DOCKER_HOST=tcp://), the same engine behind an sshd on loopback (DOCKER_HOST=ssh://, through
# the system's ssh client), the same engine over TCP with TLS, and Podman's Docker-compatible API.
# BOTTLE_MCP_SKIP_REMOTE=1 skips the first three, BOTTLE_MCP_SKIP_PODMAN=1 the last.
# (The Claude Code image test runs once, against the main engine: its 1.2 GB image is not copied over.)
stop_engines() {
  scripts/rootless-engine.sh stop || true
  scripts/ssh-engine.sh stop || true
  scripts/second-engine.sh stop || true
  scripts/podman-engine.sh stop || true
}
trap stop_engines EXIT
# Over TCP, over SSH and against Podman, the core flow (prepare, launch, hardening read back by inspect, exec
# with timeout and cancel, cp_in, list_active, stop, cleanup, leftovers, doctor, warm pools) rather
# than the whole integration suite: the rest drives the same backend code through the same engine
# calls, and a CI run has 90 minutes on two cores. Unset BOTTLE_MCP_ENGINE_TESTS to run the whole
# integration suite there by hand (scripts/second-engine.sh test, scripts/ssh-engine.sh test,
# scripts/podman-engine.sh test).
core_flow="tests/integration/test_lifecycle.py tests/integration/test_doctor_engine.py tests/integration/test_pool.py"
if [ "${BOTTLE_MCP_SKIP_REMOTE:-0}" != 1 ]; then
  echo "[test] the core flow against a second engine over TCP" >&2
  BOTTLE_MCP_ENGINE_TESTS="$core_flow" scripts/second-engine.sh test -q
  echo "[test] the core flow over SSH" >&2
  BOTTLE_MCP_ENGINE_TESTS="$core_flow" scripts/ssh-engine.sh test -q
  scripts/ssh-engine.sh stop
  echo "[test] the core flow against the second engine over TCP with TLS (client certificates)" >&2
  BOTTLE_MCP_ENGINE2_TLS=1 BOTTLE_MCP_ENGINE_TESTS="$core_flow" scripts/second-engine.sh test -q
fi
# Podman (rootful, its Docker-compatible API; installed and started by scripts/podman-engine.sh): the
# core flow, and the disk limit's attack tests under its one runtime. BOTTLE_MCP_SKIP_PODMAN=1 skips it.
if [ "${BOTTLE_MCP_SKIP_PODMAN:-0}" != 1 ]; then
  echo "[test] the core flow against Podman" >&2
  BOTTLE_MCP_ENGINE_TESTS="$core_flow" scripts/podman-engine.sh test -q
  echo "[test] the disk limit against Podman (runc, its default runtime)" >&2
  BOTTLE_MCP_ENGINE_TESTS="tests/security/test_disk.py" scripts/podman-engine.sh test -q -k runc
  echo "[test] rootless Podman: what it gives a bottle, and the refusal where it would drop the limits" >&2
  scripts/rootless-engine.sh test -q
fi
