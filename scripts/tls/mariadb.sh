#!/usr/bin/env bash
# TLS for the machine's MariaDB (issue 14), on its usual port 3306: MySQL's
# protocol upgrades to TLS in-band, so plaintext clients keep working unchanged.
#   up      copies the test CA's server certificate and key (scripts/tls-certs)
#           to /etc/mysql/tls (owned by mysql), writes a conf file naming them,
#           and restarts MariaDB once, only when that changed or TLS is off.
#   status  prints have_ssl.
# Idempotent; `up` is cheap when already configured.
set -euo pipefail
DIR=${OUTBOXER_TLS_DIR:-$HOME/.cache/outboxer/tls}
DEST=/etc/mysql/tls
CONF_DIR=/etc/mysql/mariadb.conf.d
CONF=$CONF_DIR/90-outboxer-tls.cnf
log() { printf 'tls/mariadb: %s\n' "$*" >&2; }

ping() { mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; }
have_ssl() {
  mysql -h 127.0.0.1 -P 3306 -u root -N -B -e "SHOW VARIABLES LIKE 'have_ssl'" 2>/dev/null | cut -f2
}
wait_ping() {
  for _ in $(seq 60); do ping && return 0; sleep 1; done
  log "MariaDB did not answer"; return 1
}

# Copies $1 to $2 with owner mysql and mode $3; prints "changed" if it did.
install_copy() {
  if ! cmp -s "$1" "$2" 2>/dev/null; then
    install -o mysql -g mysql -m "$3" "$1" "$2"
    echo changed
  fi
}

up() {
  [ -f "$DIR/server.pem" ] || bash "$(dirname "$0")/../tls-certs" >/dev/null
  local changed=""
  install -d -o mysql -g mysql -m 750 "$DEST"
  changed+=$(install_copy "$DIR/ca.pem" "$DEST/ca.pem" 644)
  changed+=$(install_copy "$DIR/server.pem" "$DEST/server.pem" 644)
  changed+=$(install_copy "$DIR/server.key" "$DEST/server.key" 600)
  mkdir -p "$CONF_DIR"
  local want
  want="# Written by outboxer's scripts/tls/mariadb.sh: TLS beside plaintext (test CA).
[mariadbd]
ssl_ca = $DEST/ca.pem
ssl_cert = $DEST/server.pem
ssl_key = $DEST/server.key"
  if [ "$(cat "$CONF" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$CONF"
    changed+=changed
  fi
  # Debian's my.cnf includes this folder; the machine's trimmed one may not.
  if ! grep -qs "^!includedir $CONF_DIR" /etc/mysql/my.cnf; then
    printf '\n!includedir %s/\n' "$CONF_DIR" >> /etc/mysql/my.cnf
    changed+=changed
  fi
  ping || wait_ping
  if [ -n "$changed" ] || [ "$(have_ssl)" != YES ]; then
    log "restarting MariaDB with TLS"
    mysqladmin -h 127.0.0.1 -P 3306 -u root shutdown
    for _ in $(seq 60); do pgrep -x mariadbd >/dev/null || break; sleep 1; done
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_ping
  fi
  if [ "$(have_ssl)" != YES ]; then
    log "MariaDB has no TLS (have_ssl=$(have_ssl)); see /var/log/mysql/error.log"
    return 1
  fi
}

case "${1:-up}" in
  up) up ;;
  status) echo "mariadb tls: have_ssl=$(have_ssl)" ;;
  *) echo "usage: $0 up|status" >&2; exit 2 ;;
esac
