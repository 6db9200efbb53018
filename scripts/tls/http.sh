#!/usr/bin/env bash
# TLS terminators (socat + OpenSSL) in front of the HTTP test servers, for the
# SQS, Kinesis and Pub/Sub TLS tests (issue 14). The plaintext ports stay as
# they are; each TLS port forwards to one of them:
#   https 127.0.0.1:4576 -> moto 4566 (no signature checks)
#   https 127.0.0.1:4578 -> moto 4566, a client certificate of the test CA required
#   https 127.0.0.1:8096 -> the Pub/Sub emulator 8086
# The certificate is the test server certificate of scripts/tls-certs (names
# localhost and 127.0.0.1 only), copied for the terminators.
#
# socat logs each connection (-d -d: protocol version and cipher), which the
# tests read as the server side's word that a session was encrypted.
#
# Usage: scripts/tls/http.sh up | down | status   (idempotent; `up` is cheap
# when the terminators run with the current certificate)
set -euo pipefail

CACHE=${OUTBOXER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outboxer}
CERTS=${OUTBOXER_TLS_DIR:-$HOME/.cache/outboxer/tls}
OWN=$CACHE/http-tls          # the terminators' copies of certificate and key
HOST=127.0.0.1
# tls-port:upstream-port:client-certificate-required
ROUTES=(4576:4566:0 4578:4566:1 8096:8086:0)

log() { printf 'tls/http: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

our_pid() { # port -> pid of the terminator this script started, if it still runs
  local pid f=$CACHE/socat-$1.pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && grep -q socat "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

copy_certs() { # true when the copies changed (then running terminators restart)
  command -v socat >/dev/null 2>&1 || {
    log "installing socat"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null
  }
  [ -f "$CERTS/server.pem" ] || bash "$(dirname "$0")/../tls-certs" >/dev/null
  mkdir -p "$OWN"
  chmod 700 "$OWN"
  if cmp -s "$CERTS/server.pem" "$OWN/server.pem" && cmp -s "$CERTS/server.key" "$OWN/server.key" \
    && cmp -s "$CERTS/ca.pem" "$OWN/ca.pem"; then
    return 1
  fi
  install -m 600 "$CERTS/server.pem" "$OWN/server.pem"
  install -m 600 "$CERTS/server.key" "$OWN/server.key"
  install -m 644 "$CERTS/ca.pem" "$OWN/ca.pem"
  return 0
}

stop_one() {
  local pid
  if pid=$(our_pid "$1"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do port_open "$1" || break; sleep 0.1; done
  fi
  rm -f "$CACHE/socat-$1.pid"
}

start_one() { # tls-port upstream-port client-cert-required
  local port=$1 upstream=$2 verify=$3 opts
  if port_open "$port"; then
    our_pid "$port" >/dev/null || log "port $port is taken by something else"
    return 0
  fi
  opts="openssl-listen:$port,bind=$HOST,reuseaddr,fork,backlog=128,cert=$OWN/server.pem,key=$OWN/server.key"
  if [ "$verify" = 1 ]; then
    opts="$opts,verify=1,cafile=$OWN/ca.pem"
  else
    opts="$opts,verify=0"
  fi
  log "https $HOST:$port -> $HOST:$upstream (log: $CACHE/socat-$port.log)"
  setsid nohup socat -d -d "$opts" "tcp:$HOST:$upstream" >>"$CACHE/socat-$port.log" 2>&1 </dev/null &
  echo $! >"$CACHE/socat-$port.pid"
}

up() {
  local changed=0 r port upstream verify
  copy_certs && changed=1
  for r in "${ROUTES[@]}"; do
    IFS=: read -r port upstream verify <<<"$r"
    [ "$changed" = 1 ] && stop_one "$port"
    start_one "$port" "$upstream" "$verify"
  done
  for r in "${ROUTES[@]}"; do
    port=${r%%:*}
    for _ in $(seq 50); do port_open "$port" && break; sleep 0.1; done
    port_open "$port" || { log "no terminator on $HOST:$port"; return 1; }
  done
}

case "${1:-up}" in
  up) up ;;
  down) for r in "${ROUTES[@]}"; do stop_one "${r%%:*}"; done ;;
  status)
    for r in "${ROUTES[@]}"; do
      port=${r%%:*}
      if port_open "$port"; then echo "https $HOST:$port: up"; else echo "https $HOST:$port: down"; fi
    done
    ;;
  *) echo "usage: $0 up | down | status" >&2; exit 2 ;;
esac
