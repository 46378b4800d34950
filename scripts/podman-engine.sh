#!/usr/bin/env bash
# Podman as the engine, through its Docker-compatible API (rootful).
#
#   scripts/podman-engine.sh start   # install, configure, start the API service, build the images
#   scripts/podman-engine.sh stop
#   scripts/podman-engine.sh test [pytest args]   # the integration suite against Podman
#
# Clients then use DOCKER_HOST=unix:///run/podman/podman.sock. Podman comes from Debian's
# packages. On these machines (cgroup v1 hierarchies, no systemd) it is set to runc and the
# cgroupfs manager: crun refuses hybrid cgroups here ("cgroups in hybrid mode not supported").
# The base image is loaded from the Docker engine when that has it, else bootstrapped by
# scripts/setup.sh first; the project's images are then built by Podman itself.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sock=/run/podman/podman.sock
host=unix://$sock
log() { printf '[podman] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { DOCKER_HOST=$host timeout 10 docker version >/dev/null 2>&1; }

start() {
  local need=()
  command -v podman >/dev/null 2>&1 || need+=(podman)
  [ -x /usr/libexec/podman/catatonit ] || [ -x /usr/bin/catatonit ] || need+=(catatonit)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  # Names on a bottle's egress network (CNI backend): what the egress tests' stand-in hosts are reached by.
  [ -x /usr/lib/cni/dnsname ] || need+=(golang-github-containernetworking-plugin-dnsname)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  as_root mkdir -p /etc/containers /run/podman
  default=runc
  if [ -x /usr/local/bin/bottle-mcp-runsc ] && [ "${BOTTLE_MCP_PODMAN_GVISOR:-0}" = 1 ]; then default=runsc; fi
  if [ ! -f /etc/containers/containers.conf ] || ! grep -q 'bottle-mcp' /etc/containers/containers.conf; then
    # Podman's Docker-compatible API runs every container with its default runtime, so gVisor can only
    # be had as the default for all of them (BOTTLE_MCP_PODMAN_GVISOR=1; its network stack cannot start
    # on these kernels, so it runs through a wrapper adding --network=host). It is off by default: the
    # disk-limit helper needs the host's loop devices, which no gVisor sandbox sees, so bottles with a
    # disk limit cannot launch on such a Podman.
    default=runc
    runtimes=""
    runsc_path=$(command -v runsc || true)
    if [ -n "$runsc_path" ] && [ "${BOTTLE_MCP_PODMAN_GVISOR:-0}" = 1 ]; then
      printf '#!/bin/sh\nexec %s --network=host "$@"\n' "$runsc_path" | as_root tee /usr/local/bin/bottle-mcp-runsc >/dev/null
      as_root chmod 755 /usr/local/bin/bottle-mcp-runsc
      default=runsc
      runtimes='runsc = ["/usr/local/bin/bottle-mcp-runsc"]'
    fi
    log "configuring Podman (default runtime $default, cgroupfs, file events)"
    # Default limits with soft = hard: Podman 4.3's compat API swaps them when they differ.
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    as_root tee /etc/containers/containers.conf >/dev/null <<EOF
# Written by bottle-mcp's scripts/podman-engine.sh
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[engine.runtimes]
$runtimes
EOF
    [ -f /etc/containers/storage.conf ] || as_root tee /etc/containers/storage.conf >/dev/null <<'EOF'
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
  fi
  start_service
  if ! as_root podman image exists bottle-mcp/base:bookworm; then
    if ! docker image inspect bottle-mcp/base:bookworm >/dev/null 2>&1; then
      "$here/scripts/setup.sh" --skip-images
    fi
    log "loading the base image from the Docker engine"
    docker save bottle-mcp/base:bookworm | as_root podman load -q >/dev/null
  fi
  ca_args=()
  ca=${BOTTLE_MCP_EXTRA_CA_CERTS:-/usr/local/share/ca-certificates}
  if [ -n "$ca" ] && [ -e "$ca" ]; then ca_args=(--extra-ca-certs "$ca"); fi
  DOCKER_HOST=$host "$here/.venv/bin/bottle-mcp" images --manifest "$here/manifests/example.toml" "${ca_args[@]}"
  DOCKER_HOST=$host "$here/.venv/bin/bottle-mcp" images --manifest "$here/tests/images/standin.toml"
  # Images are built under runc (gVisor cannot run these builds' steps); bottles then run under
  # the default chosen above.
  if [ "$default" != runc ] && ! grep -q "^runtime = \"$default\"" /etc/containers/containers.conf; then
    log "making $default Podman's default runtime"
    as_root sed -i "s/^runtime = \"runc\"/runtime = \"$default\"/" /etc/containers/containers.conf
    stop
    start_service
  fi
  echo "DOCKER_HOST=$host"
}

start_service() {
  if ! answers; then
    log "starting the Podman API service on $sock"
    as_root setsid nohup podman system service --time=0 "$host" >/var/log/bottle-mcp-podman.log 2>&1 \
      </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
    for _ in $(seq 1 100); do answers && break; sleep 0.2; done
    answers || { log "the Podman service did not answer; see /var/log/bottle-mcp-podman.log"; exit 1; }
  fi
}

stop() {
  pkill -f "podman system service --time=0 $host" 2>/dev/null || true
  for _ in $(seq 1 50); do answers || break; sleep 0.1; done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  test)
    shift
    start >/dev/null
    cd "$here"
    DOCKER_HOST=$host .venv/bin/python -m pytest ${BOTTLE_MCP_ENGINE_TESTS:-tests/integration} "$@"
    ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
