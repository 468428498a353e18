#!/usr/bin/env bash
# The main job: build pg_engage, install it into PostgreSQL 15, start a local cluster (as the
# non-root postgres user) with the delivery worker, start a local sink (HTTP + SMTP receivers),
# load the demo scenario, show what was decided and queued, let the worker deliver it to the sink,
# and show the delivery metrics. The cluster keeps running afterwards; the script prints how.
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
cargo build --release --quiet -p pg_engage_it --bin pg_engage_sink
SINK_BIN=$PWD/target/release/pg_engage_sink

# A fresh cluster every run, so the demo always shows the same first day.
if [ -f "$DIR/data/postmaster.pid" ]; then
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null || true
fi
rm -rf "$DIR" && mkdir -p "$DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
cd "$DIR"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
pg_ctl() { "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w "$@" >/dev/null; }
pg_ctl -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start
cd - >/dev/null

psql=("${as_pg[@]}" "$PG_BIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE $DB" >/dev/null
"${psql[@]}" -d "$DB" -c "CREATE EXTENSION pg_engage" >/dev/null

# The sink: real HTTP and SMTP servers on loopback that print what they receive.
rm -f "$DIR/sink.addresses"
"$SINK_BIN" "$DIR/sink.addresses" 120 > "$DIR/sink.log" 2>&1 &
sink_pid=$!
trap 'kill $sink_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$DIR/sink.addresses" ] && break; sleep 0.2; done
http_base=$(sed -n 's/^http_base=//p' "$DIR/sink.addresses")
smtp_port=$(sed -n 's/^smtp_port=//p' "$DIR/sink.addresses")
"${psql[@]}" -d "$DB" -v http_base="$http_base" -v smtp_port="$smtp_port" -f demo/channels.sql

# Restart with the deliverer (a background worker, so pg_engage must be preloaded).
pg_ctl -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_engage -c engage.database=$DB -c engage.poll_interval=500ms -c engage.allowed_hosts=127.0.0.1" restart

"${psql[@]}" -d "$DB" -f demo/scenario.sql

echo
echo "== Delivering to the local sink"
for _ in $(seq 120); do
    open=$("${psql[@]}" -d "$DB" -Atc "SELECT count(*) FROM engage.outbox WHERE status IN ('pending', 'claimed') AND due_at <= now()")
    [ "$open" -eq 0 ] && break
    sleep 0.5
done
sleep 1  # the sink prints what it received every 200 ms
head -n 8 "$DIR/sink.log"
echo "sink: ... $(grep -c '^sink: HTTP' "$DIR/sink.log") HTTP requests and $(grep -c '^sink: SMTP' "$DIR/sink.log") emails received (log: $DIR/sink.log)"
echo
"${psql[@]}" -d "$DB" -f demo/metrics.sql

cat <<MSG

The demo cluster is still running. Look around with:
  ${as_pg[*]} $PG_BIN/psql -h $DIR -p $PORT -U postgres $DB
Stop it with:
  ${as_pg[*]} $PG_BIN/pg_ctl -D $DIR/data stop
MSG
