#!/usr/bin/env bash
# PostgreSQL over TLS for the tests (issue 14), idempotent; plaintext connections
# of the other tests keep working unchanged. `up`:
#  - the server presents the test CA's certificate (its own copies of
#    server.pem/server.key/ca.pem, owned by postgres, key mode 600), ssl = on;
#  - role outboxer_tls_only may connect over TLS only (hostssl trust, hostnossl
#    reject): the "server requires TLS, plaintext was asked" case;
#  - role outboxer_cert logs in with the test client certificate (CN outboxer,
#    mapped in pg_ident): the mutual TLS case;
#  - role outboxer_pw needs its password (scram), a throwaway test secret: the
#    command's URL-from-a-file case (tests/cli.rs), where trust would prove nothing.
# Usage: scripts/tls/postgres.sh up | status
set -euo pipefail
DIR=${OUTBOXER_TLS_DIR:-$HOME/.cache/outboxer/tls}
log() { printf 'tls/postgres: %s\n' "$*" >&2; }
sql() { psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }
MARK="# outboxer TLS tests (scripts/tls/postgres.sh)"
END="# end of outboxer TLS tests"
PW=outboxer-pw-only-in-a-file
RULES="hostssl   all outboxer_tls_only 127.0.0.1/32 trust
hostnossl all outboxer_tls_only 127.0.0.1/32 reject
hostssl   all outboxer_cert     127.0.0.1/32 cert map=outboxer_tls
host      all outboxer_cert     127.0.0.1/32 reject
host      all outboxer_pw       127.0.0.1/32 scram-sha-256"

up() {
  local data hba ident own changed=0
  data=$(sql 'SHOW data_directory')
  hba=$(sql 'SHOW hba_file')
  ident=$(sql 'SHOW ident_file')
  own="$(dirname "$data")/outboxer-tls"
  install -d -o postgres -g postgres -m 700 "$own"
  for f in server.pem server.key ca.pem; do
    if ! cmp -s "$DIR/$f" "$own/$f"; then
      install -o postgres -g postgres -m 600 "$DIR/$f" "$own/$f"
      changed=1
    fi
  done
  if [ "$(sql 'SHOW ssl_cert_file')" != "$own/server.pem" ] \
    || [ "$(sql 'SHOW ssl_key_file')" != "$own/server.key" ] \
    || [ "$(sql 'SHOW ssl_ca_file')" != "$own/ca.pem" ] \
    || [ "$(sql 'SHOW ssl')" != "on" ]; then
    sql "ALTER SYSTEM SET ssl_cert_file = '$own/server.pem'"
    sql "ALTER SYSTEM SET ssl_key_file = '$own/server.key'"
    sql "ALTER SYSTEM SET ssl_ca_file = '$own/ca.pem'"
    sql "ALTER SYSTEM SET ssl = on"
    changed=1
  fi
  for role in outboxer_tls_only outboxer_cert outboxer_pw; do
    if [ "$(sql "SELECT count(*) FROM pg_roles WHERE rolname = '$role'")" = 0 ]; then
      sql "CREATE ROLE $role LOGIN"
      sql "GRANT ALL ON DATABASE test TO $role"
      [ "$role" != outboxer_pw ] || sql "ALTER ROLE outboxer_pw PASSWORD '$PW'"
    fi
  done
  # Rules go first (pg_hba takes the first matching line), as one marked block,
  # rewritten when it differs from RULES.
  local block
  block=$(awk -v m="$MARK" -v e="$END" '$0==m{on=1;next} $0==e{on=0;next} on' "$hba")
  if [ "$block" != "$RULES" ]; then
    local tmp
    tmp=$(mktemp)
    {
      echo "$MARK"
      echo "$RULES"
      echo "$END"
      awk -v m="$MARK" -v e="$END" '$0==m{on=1;next} $0==e{on=0;next} !on' "$hba"
    } >"$tmp"
    cat "$tmp" >"$hba"
    rm -f "$tmp"
    changed=1
  fi
  if ! grep -qF "$MARK" "$ident"; then
    printf '%s\noutboxer_tls outboxer outboxer_cert\n' "$MARK" >>"$ident"
    changed=1
  fi
  if [ "$changed" = 1 ]; then
    sql 'SELECT pg_reload_conf()' >/dev/null
    sleep 1
    log "configured (certificates in $own)"
  fi
  # The test schema is usable by the TLS-only roles (PostgreSQL 15: public is not).
  psql -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -Atqc \
    "GRANT ALL ON SCHEMA public TO outboxer_tls_only, outboxer_cert, outboxer_pw" >/dev/null
  status
}

status() {
  local got
  got=$(psql "host=localhost port=5432 user=postgres dbname=test sslmode=verify-full sslrootcert=$DIR/ca.pem" \
    -Atqc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1) || true
  if [ "$got" = t ]; then
    echo "postgres TLS: up (verify-full against the test CA, localhost:5432)"
  else
    log "TLS check failed: $got"
    return 1
  fi
}

case "${1:-up}" in
  up) up ;;
  status) status ;;
  *) echo "usage: $0 up | status" >&2; exit 2 ;;
esac
