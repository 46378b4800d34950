#!/usr/bin/env bash
# Rootless Podman for an ordinary user, with its Docker-compatible API on a socket of that user.
#
#   scripts/rootless-engine.sh start   # prints DOCKER_HOST=unix://... when it answers
#   scripts/rootless-engine.sh stop
#   scripts/rootless-engine.sh test [pytest args]   # tests/integration/test_rootless.py against it
#
# The user (BOTTLE_MCP_ROOTLESS_USER, default bmcp-rootless) is made when missing, with the
# subordinate id range useradd gives it; uidmap provides newuidmap/newgidmap. Podman runs with
# runc and the cgroupfs manager, as the rootful one does here. On these machines (cgroup v1, no
# systemd) a rootless container gets no memory, pids or CPU limits: the test checks that bottle-mcp
# refuses to launch a bottle there and says why, and that what rootless does give (the bottle's
# users mapped to unprivileged host ids) holds (docs/engines.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
user=${BOTTLE_MCP_ROOTLESS_USER:-bmcp-rootless}
run=/var/tmp/bottle-mcp-rootless-run
sock=$run/podman.sock
host=unix://$sock
images=${BOTTLE_MCP_ROOTLESS_IMAGES:-bottle-mcp/worker:latest}
log() { printf '[rootless] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_user() { as_root runuser -u "$user" -- env XDG_RUNTIME_DIR="$run" HOME="/home/$user" "$@"; }
answers() { DOCKER_HOST=$host timeout 10 docker version >/dev/null 2>&1; }

start() {
  local need=()
  command -v podman >/dev/null 2>&1 || need+=(podman catatonit runc)
  command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if ! id "$user" >/dev/null 2>&1; then
    log "making the user $user"
    as_root useradd -m -s /bin/sh "$user"
  fi
  grep -q "^$user:" /etc/subuid || echo "$user:100000:65536" | as_root tee -a /etc/subuid >/dev/null
  grep -q "^$user:" /etc/subgid || echo "$user:100000:65536" | as_root tee -a /etc/subgid >/dev/null
  as_root mkdir -p "$run"
  as_root chown "$user:" "$run"
  as_root chmod 0700 "$run"
  as_user mkdir -p "/home/$user/.config/containers"
  as_user sh -c "cat > /home/$user/.config/containers/containers.conf" <<'EOF'
# Written by bottle-mcp's scripts/rootless-engine.sh
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  if ! answers; then
    log "starting Podman's API service as $user on $sock"
    as_root rm -f "$sock"
    as_root setsid runuser -u "$user" -- env XDG_RUNTIME_DIR="$run" HOME="/home/$user" \
      podman system service --time 0 "$host" >"$run/service.log" 2>&1 </dev/null &
    for _ in $(seq 1 100); do answers && break; sleep 0.2; done
    answers || { log "it did not answer; see $run/service.log"; exit 1; }
  fi
  for image in $images; do
    if ! as_user podman image exists "$image" 2>/dev/null; then
      log "loading $image into it"
      tmp=$(mktemp -d)
      docker save "$image" -o "$tmp/image.tar"
      as_root chmod -R a+rX "$tmp"
      as_user podman load -q -i "$tmp/image.tar" >/dev/null
      as_root rm -rf "$tmp"
    fi
  done
  echo "DOCKER_HOST=$host"
}

stop() {
  pkill -u "$user" -f "podman system service" 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  test)
    shift
    start >/dev/null
    cd "$here"
    BOTTLE_MCP_ROOTLESS_HOST=$host BOTTLE_MCP_ROOTLESS_USER=$user \
      .venv/bin/python -m pytest tests/integration/test_rootless.py "$@"
    ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
