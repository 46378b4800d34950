#!/usr/bin/env bash
# The full test suite: set-up (idempotent), lint, types, then every test,
# the ones against the real Docker engine included.
#
#   scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] mypy --strict" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
.venv/bin/python -m pytest "$@"

# Nothing the suite started may outlive it (on a CI machine nobody else runs bottles).
if [ "${CI:-}" = true ]; then
  left=$( { docker ps -aq --filter label=dev.bottle-mcp.managed=true
            docker volume ls -q --filter label=dev.bottle-mcp.managed=true
            docker network ls -q --filter label=dev.bottle-mcp.managed=true; } | wc -l)
  if [ "$left" != 0 ]; then
    echo "[test] $left labelled container(s)/volume(s)/network(s) outlived the test suite:" >&2
    docker ps -a --filter label=dev.bottle-mcp.managed=true >&2
    exit 1
  fi
  echo "[test] no labelled container, volume or network left behind" >&2
fi
