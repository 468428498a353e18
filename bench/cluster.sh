# Shared by bench/metrics.sh and bench/tick.sh (sourced, not run): installs the release build
# unless BENCH_SKIP_INSTALL=1, starts a throwaway PostgreSQL cluster in BENCH_DIR on BENCH_PORT
# (stopped when the script exits), creates database "bench" with the extension, and defines
# `as_pg`, `log` (prefixed with BENCH_NAME) and the `psql` command array.
# Expects BENCH_NAME, BENCH_PORT, BENCH_DIR, PG_BIN and REPO_ROOT to be set.

as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }
log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    log "installing the release build"
    (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null)
fi
rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$BENCH_DIR"
as_pg "$PG_BIN/initdb" -D "$BENCH_DIR/data" -A trust -U postgres >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w \
    -o "-p $BENCH_PORT -k $BENCH_DIR -c shared_buffers=2GB -c work_mem=256MB -c maintenance_work_mem=1GB -c max_wal_size=8GB -c jit=${BENCH_JIT:-off}" start >/dev/null
trap 'as_pg "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -m fast stop >/dev/null 2>&1 || true' EXIT
psql=(as_pg "$PG_BIN/psql" -X -q -h "$BENCH_DIR" -p "$BENCH_PORT" -U postgres)
"${psql[@]}" -c "CREATE DATABASE bench" >/dev/null
"${psql[@]}" -d bench -c "CREATE EXTENSION pg_engage" >/dev/null
