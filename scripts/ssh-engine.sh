#!/usr/bin/env bash
# The second engine (scripts/second-engine.sh) reached over SSH, as people reach a remote
# Docker host: DOCKER_HOST=ssh://enginehost through the system's ssh client.
#
#   scripts/ssh-engine.sh start              # sshd on loopback, keys, and an ssh configuration
#   scripts/ssh-engine.sh stop
#   scripts/ssh-engine.sh env                # prints the variables a client needs (PATH, DOCKER_HOST)
#   scripts/ssh-engine.sh test [pytest args] # the integration suite over SSH
#
# Everything lives in one folder (BOTTLE_MCP_SSH_DIR, default /var/tmp/bottle-mcp-ssh): a host key,
# a client key whose authorized_keys entry may only run `docker system dial-stdio` against the
# second engine, a known_hosts file, and an ssh configuration naming the host `enginehost`. The
# user's own ~/.ssh is left alone: an `ssh` wrapper in that folder, put first on PATH, passes the
# configuration with -F. Port: BOTTLE_MCP_SSH_PORT (22022), on 127.0.0.1 only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${BOTTLE_MCP_SSH_DIR:-/var/tmp/bottle-mcp-ssh}
port=${BOTTLE_MCP_SSH_PORT:-22022}
engine2_port=${BOTTLE_MCP_ENGINE2_PORT:-23750}
log() { printf '[ssh-engine] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

running() { [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }

start() {
  if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    log "installing openssh-server (its init script is kept from starting a daemon)"
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
    as_root rm -f /usr/sbin/policy-rc.d
  fi
  "$here/scripts/second-engine.sh" start >/dev/null
  as_root mkdir -p "$dir" /run/sshd
  as_root chmod 700 "$dir"
  [ -f "$dir/hostkey" ] || as_root ssh-keygen -q -t ed25519 -N '' -f "$dir/hostkey"
  [ -f "$dir/userkey" ] || as_root ssh-keygen -q -t ed25519 -N '' -f "$dir/userkey"
  # The key may do one thing: open a stream to the second engine.
  as_root sh -c "printf 'command=\"DOCKER_HOST=tcp://127.0.0.1:$engine2_port docker system dial-stdio\",no-pty,no-agent-forwarding,no-port-forwarding,no-X11-forwarding %s\n' \"\$(cat '$dir/userkey.pub')\" > '$dir/authorized_keys'"
  as_root sh -c "echo \"[127.0.0.1]:$port \$(cut -d' ' -f1,2 '$dir/hostkey.pub')\" > '$dir/known_hosts'"
  as_root tee "$dir/sshd_config" >/dev/null <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/hostkey
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
UseDNS no
PidFile $dir/sshd.pid
MaxSessions 200
MaxStartups 200:30:400
EOF
  as_root tee "$dir/ssh_config" >/dev/null <<EOF
Host enginehost
  HostName 127.0.0.1
  Port $port
  User $(id -un)
  IdentityFile $dir/userkey
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster auto
  ControlPath $dir/cm-%C
  ControlPersist 300
EOF
  as_root tee "$dir/ssh" >/dev/null <<EOF
#!/bin/sh
exec /usr/bin/ssh -F "$dir/ssh_config" "\$@"
EOF
  as_root chmod 755 "$dir/ssh"
  if ! running; then
    log "starting sshd on 127.0.0.1:$port in front of the second engine"
    as_root /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  fi
  for _ in $(seq 1 50); do
    PATH="$dir:$PATH" DOCKER_HOST=ssh://enginehost timeout 20 docker version >/dev/null 2>&1 && break
    sleep 0.2
  done
  PATH="$dir:$PATH" DOCKER_HOST=ssh://enginehost timeout 20 docker version >/dev/null \
    || { log "the engine does not answer over SSH; see $dir/sshd.log"; exit 1; }
}

stop() {
  if running; then
    as_root kill "$(cat "$dir/sshd.pid")"
  fi
  for cm in "$dir"/cm-*; do
    [ -S "$cm" ] && PATH="$dir:$PATH" ssh -o ControlPath="$cm" -O exit enginehost 2>/dev/null || true
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "PATH=$dir:$PATH"; echo "DOCKER_HOST=ssh://enginehost" ;;
  test)
    shift
    start
    cd "$here"
    PATH="$dir:$PATH" DOCKER_HOST=ssh://enginehost .venv/bin/python -m pytest ${BOTTLE_MCP_ENGINE_TESTS:-tests/integration} "$@"
    ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
