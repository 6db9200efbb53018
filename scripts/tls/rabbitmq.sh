#!/usr/bin/env bash
# RabbitMQ's TLS listener for the TLS tests (issue 14): amqps on 127.0.0.1:5671
# beside the plaintext 5672, with the test CA's server certificate
# (scripts/tls-certs). Client certificates are verified when presented
# (verify_peer) and not required (fail_if_no_peer_cert = false), so that one
# listener serves both the one-way and the mutual TLS tests.
#
# Usage: scripts/tls/rabbitmq.sh up | status. Idempotent and cheap when done:
# the broker is restarted only when the listener is not there yet (a restart
# interrupts every AMQP test running on this broker).
set -euo pipefail
SRC=${OUTBOXER_TLS_DIR:-$HOME/.cache/outboxer/tls}
CONF=/etc/rabbitmq/rabbitmq.conf
DEST=/etc/rabbitmq/tls
MARK="# outboxer TLS listener (scripts/tls/rabbitmq.sh)"
log() { printf 'tls/rabbitmq: %s\n' "$*" >&2; }

listening() { rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 &&
  rabbitmq-diagnostics -q listeners 2>/dev/null | grep -q 'port: 5671'; }

up() {
  [ -f "$SRC/server.pem" ] || bash "$(dirname "$0")/../tls-certs" >/dev/null
  # The broker's own copies, readable by its user only; refreshed when the test CA
  # was made again.
  install -d -o rabbitmq -g rabbitmq -m 750 "$DEST"
  local changed=0 f
  for f in ca.pem server.pem server.key; do
    if ! cmp -s "$SRC/$f" "$DEST/$f"; then
      install -o rabbitmq -g rabbitmq -m 600 "$SRC/$f" "$DEST/$f"
      changed=1
    fi
  done
  if ! grep -qF "$MARK" "$CONF" 2>/dev/null; then
    log "adding the TLS listener to $CONF"
    cat >> "$CONF" <<CONF

$MARK
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $DEST/ca.pem
ssl_options.certfile = $DEST/server.pem
ssl_options.keyfile = $DEST/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
  fi
  if listening; then
    # New files under a running listener: drop the broker's cached copies.
    [ $changed = 1 ] && rabbitmqctl -q eval 'ssl:clear_pem_cache().' >/dev/null
    return 0
  fi
  log "restarting RabbitMQ once to open the TLS listener on 5671"
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  rabbitmq-server -detached >/dev/null 2>&1 || true
  local i
  for i in $(seq 120); do
    if listening; then return 0; fi
    sleep 1
  done
  log "RabbitMQ has no TLS listener on 5671 (see /var/log/rabbitmq)"
  return 1
}

case "${1:-up}" in
  up) up ;;
  status) listening && echo "amqps://127.0.0.1:5671 (TLS)" ;;
  *) echo "usage: $0 up | status" >&2; exit 2 ;;
esac
