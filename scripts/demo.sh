#!/usr/bin/env bash
# The main job: build pg_engage, install it into PostgreSQL 15, start a local cluster (as the
# non-root postgres user), load the demo scenario and show what was decided and queued.
# The cluster keeps running afterwards so you can look around; the script prints how.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
PORT=${DEMO_PORT:-55433}
DIR=/var/tmp/pg_engage-demo
DB=engage_demo

if [ "$(id -u)" -eq 0 ]; then
    as_pg=(sudo -u postgres)
    cargo pgrx install --release --pg-config "$PG_CONFIG"
else
    as_pg=()
    cargo pgrx install --sudo --release --pg-config "$PG_CONFIG"
fi

# A fresh cluster every run, so the demo always shows the same first day.
if [ -f "$DIR/data/postmaster.pid" ]; then
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null || true
fi
rm -rf "$DIR" && mkdir -p "$DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
cd "$DIR"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_engage" start >/dev/null
cd - >/dev/null

psql=("${as_pg[@]}" "$PG_BIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE $DB" >/dev/null
"${psql[@]}" -d "$DB" -f demo/scenario.sql

cat <<MSG

The demo cluster is still running. Look around with:
  ${as_pg[*]} $PG_BIN/psql -h $DIR -p $PORT -U postgres $DB
Stop it with:
  ${as_pg[*]} $PG_BIN/pg_ctl -D $DIR/data stop
MSG
