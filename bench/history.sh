#!/usr/bin/env bash
# pg_engage insert path as history grows (bench/run.sh measures it on empty tables).
#
# One throwaway cluster, the 50 triggers of bench/setup.sql. For each history size of
# BENCH_HISTORY_POINTS (events already stored, 30 days of 100,000 skewed customers with their
# decisions and sent messages, bench/history.sql; bench.bare_events gets the same events):
#   - bare and engage events/s, single-row and batch-500, 2 clients, BENCH_SECONDS each;
#   - the heaviest customer (c1, about 0.3% of the history) against an average one: 1,000
#     single-row inserts for c1, and 1,000 for uniform customers, 1 client each, engage events/s.
# Usage, from the repository root:   bash bench/history.sh
# Knobs: BENCH_HISTORY_POINTS ["0 1000000 5000000 10000000"], BENCH_SECONDS [20],
#        BENCH_PORT [55493], BENCH_DIR [/tmp/pg_engage_history_bench], BENCH_SKIP_INSTALL [0], PG_BIN.
# Writes the report to bench/results/history-latest.txt as well as stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

POINTS=${BENCH_HISTORY_POINTS:-0 1000000 5000000 10000000}
SECS=${BENCH_SECONDS:-20}
PORT=${BENCH_PORT:-55493}
DIR=${BENCH_DIR:-/tmp/pg_engage_history_bench}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DB=bench
CHUNK=1000000

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    bash scripts/setup.sh
    if [ "$(id -u)" -eq 0 ]; then
        cargo pgrx install --release --pg-config "$PG_BIN/pg_config"
    else
        cargo pgrx install --sudo --release --pg-config "$PG_BIN/pg_config"
    fi
fi

as_pg=()
[ "$(id -u)" -ne 0 ] || as_pg=(sudo -u postgres)
stop() {
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap stop EXIT
stop
mkdir -p "$DIR"
cp bench/setup.sql bench/history.sql bench/single_row_bare.sql bench/single_row_engage.sql \
   bench/batch_500_bare.sql bench/batch_500_engage.sql "$DIR"/
# The heaviest customer's script: the single-row one, always for c1.
sed "s/'c' || :cust::text/'c1'/" bench/single_row_engage.sql > "$DIR/heaviest_engage.sql"
[ "$(id -u)" -ne 0 ] || chown -R postgres: "$DIR"
(cd "$DIR" && "${as_pg[@]}" "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null)
common="-p $PORT -k $DIR -c listen_addresses='' -c synchronous_commit=off -c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min"
(cd "$DIR" && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o "$common" start >/dev/null)
psql=("${as_pg[@]}" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE $DB"
"${psql[@]}" -d "$DB" -f "$DIR/setup.sql" >/dev/null
q() { "${psql[@]}" -d "$DB" -Atc "$1"; }

# events/s of one pgbench run: $1 script, $2 clients, $3 rows per transaction, then the length
# (-T seconds, or -t transactions per client).
run() {
    local out
    out=$(cd "$DIR" && "${as_pg[@]}" "$PG_BIN/pgbench" -n -M prepared -c "$2" -j "$2" "${@:4}" -h "$DIR" -p "$PORT" \
          -U postgres -f "$DIR/$1.sql" "$DB" 2>&1) || { echo "$out" >&2; exit 1; }
    awk -v n="$3" '/^tps = / { printf "%.0f", $3 * n; exit }' <<<"$out"
}

loaded=0
rows=()
for point in $POINTS; do
    while [ "$loaded" -lt "$point" ]; do
        last=$(( loaded + CHUNK < point ? loaded + CHUNK : point ))
        "${psql[@]}" -d "$DB" -v first=$((loaded + 1)) -v last="$last" -f "$DIR/history.sql" >/dev/null
        loaded=$last
    done
    q "VACUUM ANALYZE" >/dev/null
    q "CHECKPOINT" >/dev/null
    stored=$(q "SELECT count(*) FROM engage.events")
    heaviest_week=$(q "SELECT count(*) FROM engage.events WHERE customer_id = 'c1' AND occurred_at > now() - interval '7 days'")
    bare_single=$(run single_row_bare 2 1 -T "$SECS"); engage_single=$(run single_row_engage 2 1 -T "$SECS")
    engage_batch=$(run batch_500_engage 2 500 -T "$SECS"); bare_batch=$(run batch_500_bare 2 500 -T "$SECS")
    # 1,000 events each: few beside c1's history, so the run does not make its own history.
    average=$(run single_row_engage 1 1 -t 1000); heaviest=$(run heaviest_engage 1 1 -t 1000)
    rows+=("$(awk -v h="$point" -v s="$stored" -v w="$heaviest_week" -v bs="$bare_single" -v es="$engage_single" \
        -v bb="$bare_batch" -v eb="$engage_batch" -v a="$average" -v hv="$heaviest" \
        'BEGIN { printf "| %s | %s | %s | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %.2f |", h, s, w, bs, es, es / bs, bb, eb, eb / bb, a, hv, a / hv }')")
    echo "history $point: ${rows[-1]}" >&2
done

mkdir -p bench/results
{
    echo "pg_engage insert path as history grows (bench/history.sh), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) CPUs); load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: synchronous_commit=off, shared_buffers=1GB; pgbench -M prepared, ${SECS}s per run; 50 triggers (bench/setup.sql)"
    echo
    echo "| history (events loaded) | events stored before the runs | c1's events in the last 7 days | bare single-row ev/s | engage single-row ev/s | ratio | bare batch-500 ev/s | engage batch-500 ev/s | ratio | engage 1 client, average customer ev/s | engage 1 client, heaviest (c1) ev/s | heaviest slowdown |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
} | tee bench/results/history-latest.txt
