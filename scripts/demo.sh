#!/usr/bin/env bash
# Set up (idempotent), then run the demo: the MCP server drives a real bottle.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/bottle-mcp demo "$@"
