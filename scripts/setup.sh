#!/usr/bin/env bash
# Idempotent set-up for a Debian machine: a Docker engine, the project's
# Python environment, and the images the example manifests use.
#
#   scripts/setup.sh [--extra-ca-certs DIR|FILE] [--no-host-ca] [--skip-images] [--second-engine] [--engine podman]
#
# --second-engine also starts a second engine on loopback TCP (scripts/second-engine.sh)
# for the remote-engine run of the tests; the fault tests start it themselves.
# --engine podman also sets up Podman with its Docker-compatible API at /run/podman/podman.sock
# (scripts/podman-engine.sh, docs/engines.md); use it with DOCKER_HOST=unix:///run/podman/podman.sock.
#
# Each step checks first and does nothing when its result is already there,
# so the script is cheap to run before every demo and test run. Concurrent
# runs are serialized with a lock file.
#
# Extra CA certificates: when the machine reaches package registries through
# an intercepting proxy, image builds need its CA. By default the host's
# locally added CAs (/usr/local/share/ca-certificates) are passed to builds;
# the folder is empty on an ordinary machine, so nothing changes there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

extra_ca=${BOTTLE_MCP_EXTRA_CA_CERTS:-/usr/local/share/ca-certificates}
build_images=1
second_engine=0
engine=docker
while [ $# -gt 0 ]; do
  case "$1" in
    --extra-ca-certs) extra_ca=$2; shift 2 ;;
    --no-host-ca) extra_ca=""; shift ;;
    --skip-images) build_images=0; shift ;;
    --second-engine) second_engine=1; shift ;;
    --engine) engine=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

lock=${TMPDIR:-/tmp}/bottle-mcp-setup.lock
exec 9>"$lock"
flock 9

# --- 1. packages -----------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io cgroupfs-mount iptables)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)   # fetches the third-party MCP clients the tests run
# ssh-keygen: the git/ssh gate tests make throw-away keys with it.
command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
# openssl: the TLS engine tests make a CA and certificates with it.
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# The lint step checks the in-bottle shell programs (bottle_mcp/data/inbottle/) with shellcheck.
command -v shellcheck >/dev/null 2>&1 || need_pkgs+=(shellcheck)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  # Keep the packages' init scripts from starting a daemon: we start our own.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  as_root rm -f /usr/sbin/policy-rc.d
fi

# --- 2. engine ---------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if [ -n "${DOCKER_HOST:-}" ]; then
    log "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
    exit 1
  fi
  if ! grep -q ' cgroup' /proc/mounts && ! grep -q cgroup2 /proc/mounts; then
    log "mounting cgroup hierarchies"
    as_root cgroupfs-mount || true
  fi
  log "starting dockerd"
  # 9>&- : the daemon must not inherit the lock, or it would hold it forever.
  as_root setsid nohup dockerd >/var/log/bottle-mcp-dockerd.log 2>&1 9>&- < /dev/null &
  for _ in $(seq 1 150); do
    docker info >/dev/null 2>&1 && break
    sleep 0.2
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/bottle-mcp-dockerd.log"; exit 1; }
fi
log "engine $(docker version --format '{{.Server.Version}}') answers"

# --- 2b. gVisor (runsc) for bottles with runtime "auto" -------------------------
# Debian bookworm's own runsc is too broken to use; the bookworm-backports build
# works. Its network stack cannot start on every kernel, so it is registered with
# --network=host (the container keeps its own network namespace; see
# docs/security.md). Adding a runtime needs only a configuration reload (SIGHUP),
# which leaves running containers alone. Skipped for a remote engine
# (DOCKER_HOST) and with BOTTLE_MCP_GVISOR=0.
# Every check captures a command's output first and tests it afterwards: `cmd | grep -q`
# under pipefail fails at random when grep exits early and cmd dies of SIGPIPE.
engine_runtimes() { docker info --format '{{json .Runtimes}}' 2>/dev/null || true; }
runsc_usable() {   # the backports build (2024 or later); Debian bookworm's own is too broken
  local v
  v=$(runsc --version 2>/dev/null || true)
  case "$v" in *"0.0~2024"*|*"0.0~2025"*|*"0.0~2026"*) return 0 ;; *) return 1 ;; esac
}
gvisor_wanted=0
if [ "${BOTTLE_MCP_GVISOR:-1}" = 1 ] && [ -z "${DOCKER_HOST:-}" ]; then gvisor_wanted=1; fi
if [ "$gvisor_wanted" = 1 ] && [[ "$(engine_runtimes)" != *'"runsc"'* ]]; then
  if ! runsc_usable && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    mirror=${BOTTLE_MCP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    log "installing gVisor (runsc) from bookworm-backports"
    as_root sh -c "echo 'deb $mirror bookworm-backports main' > /etc/apt/sources.list.d/bottle-mcp-backports.list"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports runsc >/dev/null || log "runsc could not be installed"
  fi
  runsc_path=$(command -v runsc || true)
  if [ -n "$runsc_path" ] && runsc_usable; then
    log "registering runsc with the engine (configuration reload, no restart)"
    as_root python3 - "$runsc_path" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
conf = {}
if os.path.exists(path):
    with open(path) as f:
        conf = json.load(f)
conf.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=host"]}
os.makedirs("/etc/docker", exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(conf, f, indent=2)
os.replace(path + ".tmp", path)
PY
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -n "$pid" ]; then as_root kill -HUP "$pid"; fi
    for _ in $(seq 1 50); do
      [[ "$(engine_runtimes)" == *'"runsc"'* ]] && break
      sleep 0.1
    done
  fi
fi
# Read the engine's runtimes back: that, not the install, is what bottles get.
if [ "$gvisor_wanted" = 1 ]; then
  if [[ "$(engine_runtimes)" == *'"runsc"'* ]]; then
    log "gVisor (runsc) is registered with the engine"
  else
    log "WARNING: gVisor (runsc) is NOT registered with the engine: bottles with runtime \"auto\" will run"
    log "WARNING: under runc, and the security suite cannot cover gVisor (runtimes: $(engine_runtimes))"
    if [ "${CI:-}" = true ]; then
      log "CI=true: failing, since this machine is expected to run gVisor (BOTTLE_MCP_GVISOR=0 opts out)"
      exit 1
    fi
  fi
fi

# --- 3. base image from the Debian mirror (no registry needed) ---------------
base_image=bottle-mcp/base:bookworm
base_recipe=2   # bump when the recipe below changes: the image is rebuilt
have_recipe=$(docker image inspect "$base_image" --format '{{ index .Config.Labels "dev.bottle-mcp.recipe" }}' 2>/dev/null || true)
if [ "$have_recipe" != "$base_recipe" ]; then
  mirror=${BOTTLE_MCP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
  log "bootstrapping $base_image from $mirror (about 30 s)"
  tar_file=$(mktemp --suffix=.tar)
  trap 'rm -f "$tar_file"' EXIT
  # Write the tar to a file first: a failed bootstrap piped straight into
  # `docker import` would still tag a truncated image.
  as_root mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=bash,python3,git,ca-certificates,coreutils,procps,findutils \
    --customize-hook='printf "APT::Install-Recommends \"false\";\nAcquire::Languages \"none\";\n" > "$1/etc/apt/apt.conf.d/90bottle-mcp"' \
    --customize-hook='printf "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true\"; };\nBinary::apt::APT::Keep-Downloaded-Packages \"false\";\n" > "$1/etc/apt/apt.conf.d/91bottle-mcp-clean"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$tar_file" "deb $mirror bookworm main" "deb $mirror bookworm-updates main"
  docker import \
    --change "LABEL dev.bottle-mcp.recipe=$base_recipe" \
    --change "LABEL dev.bottle-mcp.managed=true" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$tar_file" "$base_image" >/dev/null
  rm -f "$tar_file"
fi

# --- 4. Python environment ----------------------------------------------------
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.bottle-mcp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing the package and its test tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# --- 5. images ----------------------------------------------------------------
if [ "$build_images" = 1 ]; then
  ca_args=()
  if [ -n "$extra_ca" ]; then ca_args=(--extra-ca-certs "$extra_ca"); fi
  # Builds the example's images and the server's own (the egress proxy and the git gate).
  .venv/bin/bottle-mcp images --manifest manifests/example.toml "${ca_args[@]}"
  # The test bottle with a stand-in agent CLI (one small layer over the worker image).
  .venv/bin/bottle-mcp images --manifest tests/images/standin.toml
  # The Claude Code image (Node.js from Debian, the CLI from the npm registry: about a minute and
  # 1.2 GB) is built in CI, or when asked, so that its test runs the real CLI.
  if [ "${CI:-}" = true ] || [ "${BOTTLE_MCP_CLAUDE_IMAGE:-0}" = 1 ]; then
    .venv/bin/bottle-mcp images --manifest manifests/claude.toml "${ca_args[@]}"
  fi
fi
if [ "$engine" = podman ]; then
  BOTTLE_MCP_EXTRA_CA_CERTS=$extra_ca scripts/podman-engine.sh start 9>&- >/dev/null
elif [ "$engine" != docker ]; then
  log "unknown engine $engine (docker or podman)"; exit 2
fi
if [ "$second_engine" = 1 ]; then
  scripts/second-engine.sh start 9>&- >/dev/null
fi
# --- 6. third-party MCP clients for tests/clients (Node 22, Inspector, conformance suite) ---
scripts/third-party-clients.sh install

log "ready"
