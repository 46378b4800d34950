#!/usr/bin/env bash
# A second Docker engine beside the main one, reached over TCP on loopback:
# for the "remote engine" run of the test suite and for the engine-fault tests.
#
#   scripts/second-engine.sh start   # prints DOCKER_HOST=tcp://127.0.0.1:PORT when it answers
#   scripts/second-engine.sh stop    # stops it (the image and data stay for a fast restart)
#   scripts/second-engine.sh purge   # stops it and deletes its data
#   scripts/second-engine.sh test [pytest args]   # the integration suite against it
#
# With BOTTLE_MCP_ENGINE2_TLS=1 it listens with TLS instead (--tlsverify: client certificates of a CA
# made here, on port 23760 by default) and prints DOCKER_TLS_VERIFY and DOCKER_CERT_PATH too, the way
# a remote engine is reached. The data root is shared: images copied once serve both modes.
#
# It has its own data root, exec root, pid file and containerd, its own bridge and no
# iptables rules (bottles have no network anyway), and listens on 127.0.0.1 only.
# (Not --bridge=none: a dockerd started that way deletes the host's docker0, which the
# main engine needs for image builds.)
# `start` copies the test images over from the main engine when they are missing or older there.
# Settings: BOTTLE_MCP_ENGINE2_PORT (23750), BOTTLE_MCP_ENGINE2_DIR (/var/tmp/bottle-mcp-engine2),
# BOTTLE_MCP_ENGINE2_IMAGES (default: the worker, stand-in and egress-proxy images).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tls=${BOTTLE_MCP_ENGINE2_TLS:-0}
dir=${BOTTLE_MCP_ENGINE2_DIR:-/var/tmp/bottle-mcp-engine2}
if [ "$tls" = 1 ]; then
  port=${BOTTLE_MCP_ENGINE2_PORT:-23760}
  certs="$dir/tls"
  export DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$certs/client"
else
  port=${BOTTLE_MCP_ENGINE2_PORT:-23750}
fi
host="tcp://127.0.0.1:$port"
bridge=${BOTTLE_MCP_ENGINE2_BRIDGE:-bmcp-engine2}
# The egress proxy's tag is the hash of its recipe: ask the package for it.
egress_image=$("$here/.venv/bin/python" -c 'from bottle_mcp.backends.docker.images import builtin_tag; print(builtin_tag("egress-proxy"))' 2>/dev/null || true)
images=${BOTTLE_MCP_ENGINE2_IMAGES:-bottle-mcp/worker:latest bottle-mcp/standin:latest $egress_image}
log() { printf '[engine2] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
main() { env -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH "$@"; }  # the main engine, over its socket
answers() { DOCKER_HOST=$host timeout 5 docker info >/dev/null 2>&1; }

# A CA, a server certificate for 127.0.0.1 and a client certificate (DOCKER_CERT_PATH layout), once.
make_certs() {
  [ -f "$certs/client/key.pem" ] && return
  as_root mkdir -p "$certs/server" "$certs/client"
  as_root chmod 0755 "$certs"
  local ssl=(as_root openssl)
  (
    cd "$certs"
    "${ssl[@]}" req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=bottle-mcp engine2 CA" \
      -keyout ca-key.pem -out ca.pem 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' | as_root tee server.ext >/dev/null
    printf 'extendedKeyUsage=clientAuth\n' | as_root tee client.ext >/dev/null
    for who in server client; do
      "${ssl[@]}" req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$who/key.pem" -out "$who.csr" 2>/dev/null
      "${ssl[@]}" x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
        -extfile "$who.ext" -out "$who/cert.pem" 2>/dev/null
      as_root cp ca.pem "$who/ca.pem"
    done
  )
}

start() {
  tls_flags=()
  if [ "$tls" = 1 ]; then
    make_certs
    tls_flags=(--tlsverify --tlscacert "$certs/server/ca.pem" --tlscert "$certs/server/cert.pem"
      --tlskey "$certs/server/key.pem")
  fi
  if ! answers; then
    stop  # the same data root may be served in the other mode
    as_root mkdir -p "$dir/data" "$dir/exec"
    if ! ip link show "$bridge" >/dev/null 2>&1; then
      as_root ip link add "$bridge" type bridge
      as_root ip addr add 169.254.213.1/24 dev "$bridge"
      as_root ip link set "$bridge" up
    fi
    log "starting a second dockerd on $host"
    # A plain command (not a shell function) in the background: the daemon is exec'd directly,
    # so no waiting subshell keeps the caller's output pipes open.
    sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo setsid nohup dockerd \
      --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
      -H "$host" "${tls_flags[@]}" --bridge="$bridge" --iptables=false --ip6tables=false --ip-masq=false \
      >"$dir/dockerd.log" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
    for _ in $(seq 1 150); do answers && break; sleep 0.2; done
    answers || { log "it did not answer; see $dir/dockerd.log"; exit 1; }
  fi
  # The images the integration suite uses that the main engine has and this one lacks (or has older),
  # saved together so that their shared layers travel once.
  missing=()
  for image in $images; do
    want=$(main docker image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)
    [ -n "$want" ] || continue
    have=$(DOCKER_HOST=$host docker image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)
    [ "$want" = "$have" ] || missing+=("$image")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "loading ${missing[*]} into it"
    main docker save "${missing[@]}" | DOCKER_HOST=$host docker load -q >/dev/null
  fi
  echo "DOCKER_HOST=$host"
  if [ "$tls" = 1 ]; then
    echo "DOCKER_TLS_VERIFY=1"
    echo "DOCKER_CERT_PATH=$certs/client"
  fi
}

stop() {
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd $pid"
      as_root kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  # Unmount whatever it left mounted under its own folder, deepest first.
  { grep " $dir/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do as_root umount -l "$m" || true; done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  purge) stop; as_root rm -rf "$dir" ;;
  test)
    shift
    start >/dev/null
    cd "$here"
    DOCKER_HOST=$host .venv/bin/python -m pytest ${BOTTLE_MCP_ENGINE_TESTS:-tests/integration} "$@"
    ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
