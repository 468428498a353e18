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
#        BENCH_SKIP_INSTALL [0], BENCH_JIT [off: the server's jit setting]
set -euo pipefail
BENCH_EVENTS="${BENCH_EVENTS:-10000000}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_MARKED="${BENCH_MARKED:-1000}"
BENCH_PORT="${BENCH_PORT:-55492}"
BENCH_DIR="${BENCH_DIR:-/tmp/pg_engage_bench_metrics}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$REPO_ROOT/bench/results/metrics-latest.txt"

BENCH_NAME=metrics
# shellcheck source=bench/cluster.sh
source "$REPO_ROOT/bench/cluster.sh"

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
