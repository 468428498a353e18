#!/usr/bin/env bash
# pg_engage delivery benchmark: the built-in deliverer sending to a local webhook receiver that
# answers 200 at once (the pg_engage_sink binary: real HTTP on 127.0.0.1).
#
#   (a) throughput: 20,000 messages queued while their channel is disabled, then released (the
#       UPDATE of engage.channels wakes the deliverer at commit); messages/s from release to the
#       last one sent (target >= 5,000/s on 2 cores, the receiver on the same 2 cores);
#   (b) latency: a steady 200 events/s for BENCH_SECONDS with pgbench -R; for each message, event
#       occurred_at -> sent_at, p50/p95/p99 (target p99 <= 50 ms).
#
# Usage, from the repository root:   bash bench/delivery.sh
# Knobs: BENCH_MESSAGES [20000], BENCH_RATE [200], BENCH_SECONDS [20], BENCH_PORT [55491],
#        BENCH_DIR [/tmp/pg_engage_delivery_bench], BENCH_SKIP_INSTALL [0], PG_BIN.
# Writes the report to bench/results/delivery-latest.txt as well as stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${BENCH_MESSAGES:-20000}
RATE=${BENCH_RATE:-200}
SECONDS_=${BENCH_SECONDS:-20}
PORT=${BENCH_PORT:-55491}
DIR=${BENCH_DIR:-/tmp/pg_engage_delivery_bench}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DB=bench

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    bash scripts/setup.sh
    if [ "$(id -u)" -eq 0 ]; then
        cargo pgrx install --release --pg-config "$PG_BIN/pg_config"
    else
        cargo pgrx install --sudo --release --pg-config "$PG_BIN/pg_config"
    fi
fi
cargo build --release --quiet -p pg_engage_it --bin pg_engage_sink
SINK_BIN=$PWD/target/release/pg_engage_sink

as_pg=()
[ "$(id -u)" -ne 0 ] || as_pg=(sudo -u postgres)
stop() {
    [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap stop EXIT
stop
mkdir -p "$DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
(cd "$DIR" && "${as_pg[@]}" "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null)
pg_ctl() { (cd "$DIR" && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w "$@" >/dev/null); }
common="-p $PORT -k $DIR -c listen_addresses='' -c synchronous_commit=off -c shared_buffers=1GB"
pg_ctl -o "$common" start
psql=("${as_pg[@]}" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE $DB"
"${psql[@]}" -d "$DB" -c "CREATE EXTENSION pg_engage"

"$SINK_BIN" "$DIR/sink.addresses" 3600 --quiet > "$DIR/sink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 50); do [ -s "$DIR/sink.addresses" ] && break; sleep 0.2; done
http_base=$(sed -n 's/^http_base=//p' "$DIR/sink.addresses")
"${psql[@]}" -d "$DB" <<SQL
INSERT INTO engage.channels (kind, config) VALUES ('webhook', jsonb_build_object('url', '$http_base/hook'));
INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('webhook', '{"signing_secret": "whsec_YmVuY2htYXJrLXNpZ25pbmcta2V5LTAxMjM0NTY3"}');
SELECT engage.create_trigger('ping_hook', '{"event": "ping", "action": {"channel": "webhook", "payload": {"bench": true}}}');
SQL

# The deliverer runs from here on (preloaded); the channel is disabled for the queue-up phase
# (a disabled channel's messages are held in the queue).
pg_ctl -o "$common -c shared_preload_libraries=pg_engage -c engage.database=$DB -c engage.allowed_hosts=127.0.0.1" restart
q() { "${psql[@]}" -d "$DB" -Atc "$1"; }
for _ in $(seq 50); do [ "$(q "SELECT pid IS NOT NULL FROM engage.worker_status()")" = t ] && break; sleep 0.2; done

# (a) throughput
q "UPDATE engage.channels SET enabled = false" >/dev/null
q "INSERT INTO engage.events (customer_id, name) SELECT 'c' || g, 'ping' FROM generate_series(1, $MESSAGES) g" >/dev/null
queued=$(q "SELECT count(*) FROM engage.outbox WHERE status = 'pending'")
released=$(q "UPDATE engage.channels SET enabled = true RETURNING clock_timestamp()")
for _ in $(seq 1200); do
    [ "$(q "SELECT count(*) FROM engage.outbox WHERE status = 'sent'")" -ge "$queued" ] && break
    sleep 0.25
done
read -r sent seconds < <(q "SELECT count(*), extract(epoch FROM max(sent_at) - '$released'::timestamptz) FROM engage.messages" | tr '|' ' ')
throughput=$(awk -v n="$sent" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')

# (b) latency under a steady event rate
q "TRUNCATE engage.messages" >/dev/null
cat > "$DIR/ping.sql" <<'EOF'
\set c random(1, 1000000)
INSERT INTO engage.events (customer_id, name) VALUES ('l' || :c, 'ping');
EOF
chmod 644 "$DIR/ping.sql"
"${as_pg[@]}" "$PG_BIN/pgbench" -n -c 2 -j 2 -R "$RATE" -T "$SECONDS_" -h "$DIR" -p "$PORT" -U postgres -f "$DIR/ping.sql" "$DB" > "$DIR/pgbench.log" 2>&1
sleep 2
latency=$(q "SELECT count(*) || ' messages; p50 ' || round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY s))
                   || ' ms, p95 ' || round(1000 * percentile_cont(0.95) WITHIN GROUP (ORDER BY s))
                   || ' ms, p99 ' || round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY s))
                   || ' ms, max ' || round(1000 * max(s)) || ' ms'
               FROM (SELECT extract(epoch FROM m.sent_at - e.occurred_at) AS s
                       FROM engage.messages m JOIN engage.events e ON e.id = m.event_id) t")
not_sent=$(q "SELECT count(*) FROM engage.outbox WHERE status <> 'sent'")

mkdir -p bench/results
{
    echo "pg_engage delivery benchmark (bench/delivery.sh), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) CPUs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: synchronous_commit=off, engage.batch_size=200, engage.concurrency=8 (defaults), signed webhook to a local 200-at-once receiver"
    echo
    echo "(a) throughput: $sent of $queued queued messages sent in ${seconds}s = $throughput messages/s (target >= 5000)"
    echo "(b) latency at $RATE events/s for ${SECONDS_}s, occurred_at -> sent_at: $latency (target p99 <= 50 ms)"
    echo "    messages not sent at the end: $not_sent"
} | tee bench/results/delivery-latest.txt
