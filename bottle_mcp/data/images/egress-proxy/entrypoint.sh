#!/bin/sh
# Start the egress proxy: mitmdump on loopback, reachable only through the
# Unix socket /run/egress/proxy.sock (a volume shared with the forwarder that
# sits in the bottle's network namespace).
#
#   entrypoint.sh proxy      the sidecar
#   entrypoint.sh forward    the forwarder: 127.0.0.1:3128 in the bottle -> the socket
#   entrypoint.sh credentials   (run by the server over an exec) stdin -> the tmpfs, for the proxy
set -eu
umask 077
sock=/run/egress/proxy.sock
conf=/run/egress-conf
creds="$conf/credentials.json"

case "${1:-proxy}" in
forward)
  exec socat TCP-LISTEN:3128,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:$sock"
  ;;
credentials)
  # Stand-ins and real values arrive on stdin, never in the container's configuration; the proxy
  # reads the file once when it starts and deletes it.
  cat > "$creds.part"
  mv -f "$creds.part" "$creds"
  exit 0
  ;;
proxy)
  if [ "${EGRESS_WAIT_CREDENTIALS:-}" = 1 ]; then
    i=0
    while [ ! -f "$creds" ]; do
      i=$((i + 1))
      if [ "$i" -gt 300 ]; then
        echo "entrypoint.sh: no credentials were handed over within 30 s" >&2
        exit 1
      fi
      sleep 0.1
    done
  fi
  ;;
*)
  echo "entrypoint.sh: unknown mode $1 (proxy or forward)" >&2
  exit 2
  ;;
esac

set --
if [ -n "${EGRESS_UPSTREAM_CA:-}" ]; then
  # Trust the system's CAs plus the one the manifest names, for upstream TLS.
  cat /etc/ssl/certs/ca-certificates.crt > "$conf/upstream-ca.pem"
  printf '%s\n' "$EGRESS_UPSTREAM_CA" >> "$conf/upstream-ca.pem"
  set -- --set "ssl_verify_upstream_trusted_ca=$conf/upstream-ca.pem"
fi

rm -f "$sock"
socat "UNIX-LISTEN:$sock,fork,mode=600" TCP:127.0.0.1:3128 &
exec mitmdump \
  --listen-host 127.0.0.1 --listen-port 3128 \
  --set confdir="$conf" \
  --set onboarding=false \
  --set termlog_verbosity=warn \
  --set flow_detail=0 \
  -s /opt/egress/egress_addon.py \
  "$@"
