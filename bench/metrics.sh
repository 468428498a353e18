#!/usr/bin/env bash
# pg_engage metrics benchmark: how long the analyst views take over a large history.
#
# Starts a throwaway PostgreSQL 15 cluster with the installed extension, writes a synthetic
# history (bench/metrics_data.sql: BENCH_EVENTS events, default 10 million, with their decisions,
# messages and responses), builds the metrics rollups (engage.rebuild_metrics, since the history
# bypassed the insert path), then runs each typical analyst query BENCH_ROUNDS times and prints the
# median time: once with the rollups refreshed, once with BENCH_MARKED customers marked (a refresh
# backlog, computed live by the views); then times engage.refresh_metrics on that backlog.
# Results go to bench/results/metrics-latest.txt.
#
# Usage, from the repository root:   bash bench/metrics.sh
# Knobs: BENCH_EVENTS [10000000], BENCH_ROUNDS [3], BENCH_MARKED [1000], BENCH_PORT [55492],
#        BENCH_DIR [/tmp/pg_engage_bench_metrics], PG_BIN [/usr/lib/postgresql/15/bin],
#        BENCH_SKIP_INSTALL [0]
set -euo pipefail
BENCH_EVENTS="${BENCH_EVENTS:-10000000}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_MARKED="${BENCH_MARKED:-1000}"
BENCH_PORT="${BENCH_PORT:-55492}"
BENCH_DIR="${BENCH_DIR:-/tmp/pg_engage_bench_metrics}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$REPO_ROOT/bench/results/metrics-latest.txt"

as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }
log() { printf '[metrics %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    log "installing the release build"
    (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null)
fi
rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$BENCH_DIR"
as_pg "$PG_BIN/initdb" -D "$BENCH_DIR/data" -A trust -U postgres >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w \
    -o "-p $BENCH_PORT -k $BENCH_DIR -c shared_buffers=2GB -c work_mem=256MB -c maintenance_work_mem=1GB -c max_wal_size=8GB -c jit=off" start >/dev/null
trap 'as_pg "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -m fast stop >/dev/null 2>&1 || true' EXIT
psql=(as_pg "$PG_BIN/psql" -X -q -h "$BENCH_DIR" -p "$BENCH_PORT" -U postgres)
"${psql[@]}" -c "CREATE DATABASE bench" >/dev/null
"${psql[@]}" -d bench -c "CREATE EXTENSION pg_engage" >/dev/null

log "writing $BENCH_EVENTS events and their decisions, messages and responses"
started=$(date +%s)
sizes=$("${psql[@]}" -d bench -At -v events="$BENCH_EVENTS" -f "$REPO_ROOT/bench/metrics_data.sql" | tail -1)
log "history written in $(( $(date +%s) - started )) s: events|decisions|messages = $sizes"

started=$(date +%s)
rebuilt=$("${psql[@]}" -d bench -At -c "SELECT engage.rebuild_metrics()")
rebuild_s=$(( $(date +%s) - started ))
log "rollups rebuilt for $rebuilt customers in $rebuild_s s"
"${psql[@]}" -d bench -c "VACUUM ANALYZE" >/dev/null

queries=(
  "SELECT * FROM engage.trigger_volume WHERE trigger = 't1'"
  "SELECT * FROM engage.trigger_volume_daily WHERE anomaly"
  "SELECT * FROM engage.trigger_fire_rate"
  "SELECT * FROM engage.trigger_response_rates"
  "SELECT * FROM engage.message_responses WHERE message_id = 424242"
  "SELECT * FROM engage.trigger_revenue WHERE model = 'last_touch'"
  "SELECT * FROM engage.holdout_uplift WHERE trigger = 't1'"
  "SELECT * FROM engage.variant_results"
  "SELECT * FROM engage.trigger_latency"
  "SELECT * FROM engage.trigger_roi"
)
# Prints the median of BENCH_ROUNDS timings of one query, in ms.
median_ms() {
  local times=() t
  for _ in $(seq "$BENCH_ROUNDS"); do
    t=$("${psql[@]}" -d bench -c '\timing on' -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)
    times+=("$t")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (BENCH_ROUNDS + 1) / 2 ))p"
}
mark="INSERT INTO engage.metrics_dirty (customer_id)
      SELECT DISTINCT customer_id FROM engage.messages WHERE outbox_id % 997 = 1 ORDER BY 1 LIMIT $BENCH_MARKED"

{
  echo "pg_engage metrics benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "history: events|decisions|messages = $sizes; median of $BENCH_ROUNDS runs"
  echo "rollups rebuilt (engage.rebuild_metrics) for $rebuilt customers in $rebuild_s s"
  printf '%12s %14s  %s\n' refreshed "$BENCH_MARKED marked" query
  for q in "${queries[@]}"; do
    clean=$(median_ms "$q")
    "${psql[@]}" -d bench -c "$mark" >/dev/null
    marked=$(median_ms "$q")
    "${psql[@]}" -d bench -c "SELECT engage.refresh_metrics()" >/dev/null
    printf '%9.0f ms %11.0f ms  %s\n' "$clean" "$marked" "$q"
  done
  "${psql[@]}" -d bench -c "$mark" >/dev/null
  refresh=$("${psql[@]}" -d bench -c '\timing on' -c "SELECT engage.refresh_metrics()" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)
  printf 'engage.refresh_metrics() of %s marked customers: %.0f ms\n' "$BENCH_MARKED" "$refresh"
} | tee "$RESULTS"
