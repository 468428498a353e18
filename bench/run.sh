#!/usr/bin/env bash
# pg_engage insert-path benchmark.
#
# Measures, in one run on one throwaway PostgreSQL 15 cluster, side by side:
#   (a) bare:   INSERTs into bench.bare_events, a table shaped like engage.events with no trigger;
#   (b) engage: the same INSERTs into engage.events with 50 enabled triggers (bench/setup.sql).
# for two workloads (single-row INSERTs, 500-row multi-row INSERTs), each with 2 pgbench clients.
# Runs are interleaved (a, b, a, b ...) and repeated BENCH_ROUNDS times; the median events/s and
# the ratio engage/bare are printed and written to bench/results/latest.txt.
#
# Usage, from the repository root:   bash bench/run.sh
# Environment knobs (defaults in brackets):
#   BENCH_SECONDS       duration of each measured pgbench run [20]
#   BENCH_ROUNDS        number of (bare, engage) pairs per workload [3]
#   BENCH_CLIENTS       pgbench clients (and threads) [2]
#   BENCH_PORT          port of the throwaway cluster [55490]
#   BENCH_DIR           directory of the throwaway cluster, removed on exit [/tmp/pg_engage_bench]
#   PG_BIN              PostgreSQL 15 binaries [/usr/lib/postgresql/15/bin]
#   BENCH_SKIP_INSTALL  1 = do not run `cargo pgrx install --release` first [0]
#   BENCH_TARGET_SINGLE, BENCH_TARGET_BATCH   ratio targets printed in the table [0.50, 0.35: issue 16]
#   BENCH_PATTERNS      1 = also load bench/patterns.sql (20 pattern triggers: counts, sequences,
#                       absences, combinations) on top of the 50; results go to
#                       bench/results/patterns-latest.txt [0]
#   BENCH_HISTORY       1 = measure against a stored history instead of truncated tables: runs
#                       bench/history.sh (30 days of skewed customers, BENCH_HISTORY_POINTS
#                       events of it, the heaviest customer against an average one) [0]
set -euo pipefail
if [ "${BENCH_HISTORY:-0}" = 1 ]; then
  exec bash "$(dirname "${BASH_SOURCE[0]}")/history.sh"
fi

BENCH_SECONDS="${BENCH_SECONDS:-20}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_CLIENTS="${BENCH_CLIENTS:-2}"
BENCH_PORT="${BENCH_PORT:-55490}"
BENCH_DIR="${BENCH_DIR:-/tmp/pg_engage_bench}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
BENCH_SKIP_INSTALL="${BENCH_SKIP_INSTALL:-0}"
BENCH_TARGET_SINGLE="${BENCH_TARGET_SINGLE:-0.50}"
BENCH_TARGET_BATCH="${BENCH_TARGET_BATCH:-0.35}"
BENCH_PATTERNS="${BENCH_PATTERNS:-0}"
if [ "$BENCH_PATTERNS" = 1 ]; then EXPECTED_TRIGGERS=70; RESULT_FILE=patterns-latest.txt; else EXPECTED_TRIGGERS=50; RESULT_FILE=latest.txt; fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SRC="$REPO_ROOT/bench"
RESULTS_DIR="$BENCH_SRC/results"
DATA="$BENCH_DIR/data"
SOCK="$BENCH_DIR/sock"
SCRIPTS="$BENCH_DIR/scripts"
LOGS="$BENCH_DIR/logs"
MARKER="$BENCH_DIR/.pg_engage_bench"
DB=bench
PG_SUPERUSER=postgres

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench/run.sh: error: %s\n' "$*" >&2; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_posint() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }
is_posint "$BENCH_SECONDS" || die "BENCH_SECONDS must be a positive integer, got '$BENCH_SECONDS'"
is_posint "$BENCH_ROUNDS" || die "BENCH_ROUNDS must be a positive integer, got '$BENCH_ROUNDS'"
is_posint "$BENCH_CLIENTS" || die "BENCH_CLIENTS must be a positive integer, got '$BENCH_CLIENTS'"
is_uint "$BENCH_PORT" || die "BENCH_PORT must be a port number, got '$BENCH_PORT'"
case "$BENCH_DIR" in
  /?*) ;;
  *) die "BENCH_DIR must be an absolute path, got '$BENCH_DIR'" ;;
esac
[ "$BENCH_DIR" != "/" ] || die "BENCH_DIR must not be /"

# --- running PostgreSQL programs as a non-root user ------------------------------------------
# PostgreSQL refuses to run as root; as root, every server and client program runs as the
# `postgres` OS user.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user (install postgresql-15)"
  if command -v sudo >/dev/null 2>&1; then
    as_pg() { sudo -u postgres -- "$@"; }
  elif command -v runuser >/dev/null 2>&1; then
    as_pg() { runuser -u postgres -- "$@"; }
  else
    die "running as root but neither sudo nor runuser is available to switch to the postgres user"
  fi
  RUN_AS=postgres
else
  as_pg() { "$@"; }
  RUN_AS="$(id -un)"
fi

# --- prerequisites and install ---------------------------------------------------------------
have_prereqs() {
  [ -x "$PG_BIN/pg_config" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] \
    && [ -x "$PG_BIN/psql" ] && [ -x "$PG_BIN/pgbench" ] \
    && { [ "$BENCH_SKIP_INSTALL" = 1 ] || cargo pgrx --version >/dev/null 2>&1; }
}

if ! have_prereqs && [ -f "$REPO_ROOT/scripts/setup.sh" ]; then
  log "prerequisites missing: sourcing scripts/setup.sh"
  set +u
  # shellcheck disable=SC1091
  source "$REPO_ROOT/scripts/setup.sh"
  set -u
fi
for prog in pg_config initdb pg_ctl psql pgbench; do
  [ -x "$PG_BIN/$prog" ] || die "$PG_BIN/$prog not found: install postgresql-15 and postgresql-contrib (pgbench), or set PG_BIN"
done

PKGLIBDIR="$("$PG_BIN/pg_config" --pkglibdir)"
SHAREDIR="$("$PG_BIN/pg_config" --sharedir)"

if [ "$BENCH_SKIP_INSTALL" != 1 ]; then
  cargo pgrx --version >/dev/null 2>&1 \
    || die "'cargo pgrx' not found: install it with 'cargo install cargo-pgrx --version 0.18.0 --locked' (or run scripts/setup.sh), or set BENCH_SKIP_INSTALL=1 to use an already installed pg_engage"
  log "installing pg_engage: cargo pgrx install --release --pg-config $PG_BIN/pg_config"
  (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_BIN/pg_config")
fi
[ -f "$PKGLIBDIR/pg_engage.so" ] || die "$PKGLIBDIR/pg_engage.so not found: the extension is not installed (run without BENCH_SKIP_INSTALL=1)"
[ -f "$SHAREDIR/extension/pg_engage.control" ] || die "$SHAREDIR/extension/pg_engage.control not found: the extension is not installed"

SO_MTIME_START="$(stat -c %Y "$PKGLIBDIR/pg_engage.so")"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"

# The bare and engage scripts of one workload must differ only in the target table.
for w in single_row batch_500; do
  for v in bare engage; do
    [ -f "$BENCH_SRC/${w}_$v.sql" ] || die "missing pgbench script bench/${w}_$v.sql"
  done
  diff <(sed 's/bench\.bare_events/TARGET/g; s/(a) bare: no trigger/VARIANT/' "$BENCH_SRC/${w}_bare.sql") \
       <(sed 's/(b) engage\.events with the 50 benchmark triggers/VARIANT/; s/engage\.events/TARGET/g' "$BENCH_SRC/${w}_engage.sql") >/dev/null \
    || die "bench/${w}_bare.sql and bench/${w}_engage.sql differ in more than the target table"
done

# --- throwaway cluster -------------------------------------------------------------------------
SERVER_STARTED=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$SERVER_STARTED" = 1 ] || [ -f "$DATA/postmaster.pid" ]; then
    if [ "$rc" -ne 0 ] && [ -f "$LOGS/server.log" ]; then
      printf '\n--- last lines of the server log (%s) ---\n' "$LOGS/server.log" >&2
      tail -n 40 "$LOGS/server.log" >&2 || true
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 \
      || as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$MARKER" ]; then
    rm -rf "$BENCH_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -e "$BENCH_DIR" ]; then
  [ -f "$MARKER" ] || die "$BENCH_DIR exists and was not created by bench/run.sh: remove it or set BENCH_DIR"
  log "removing a stale benchmark directory $BENCH_DIR"
  if [ -f "$DATA/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$BENCH_DIR"
fi
mkdir -p "$BENCH_DIR" "$SOCK" "$SCRIPTS" "$LOGS"
touch "$MARKER"
cp "$BENCH_SRC"/single_row_bare.sql "$BENCH_SRC"/single_row_engage.sql \
   "$BENCH_SRC"/batch_500_bare.sql "$BENCH_SRC"/batch_500_engage.sql "$SCRIPTS"/
if [ "$(id -u)" -eq 0 ]; then
  chown -R postgres: "$BENCH_DIR"
fi
chmod 700 "$BENCH_DIR"
# The rest runs from the cluster directory, which the postgres user can read.
cd "$BENCH_DIR"

log "initdb $DATA (as $RUN_AS)"
as_pg "$PG_BIN/initdb" -D "$DATA" -U "$PG_SUPERUSER" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
  >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }

as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<EOF

# --- pg_engage benchmark (bench/run.sh) ---
port = $BENCH_PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_buffers = 1GB
synchronous_commit = off
fsync = on
max_wal_size = 4GB
checkpoint_timeout = 30min
EOF

log "starting PostgreSQL on port $BENCH_PORT (socket in $SOCK)"
as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOGS/server.log" -w -t 60 start >/dev/null \
  || die "the server did not start"
SERVER_STARTED=1

psql_db() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$BENCH_PORT" -U "$PG_SUPERUSER" "$@"
}
# One value (or tab-separated row) from a query in the benchmark database.
q() { psql_db -d "$DB" -At -F $'\t' -c "$1"; }

psql_db -d postgres -c "CREATE DATABASE $DB" >/dev/null
log "loading bench/setup.sql: CREATE EXTENSION pg_engage, bench.bare_events, 50 triggers"
psql_db -d "$DB" -f - <"$BENCH_SRC/setup.sql" >"$LOGS/setup.log" 2>&1 \
  || { cat "$LOGS/setup.log" >&2; die "bench/setup.sql failed"; }
if [ "$BENCH_PATTERNS" = 1 ]; then
  log "loading bench/patterns.sql: 20 pattern triggers"
  psql_db -d "$DB" -f - <"$BENCH_SRC/patterns.sql" >>"$LOGS/setup.log" 2>&1 \
    || { cat "$LOGS/setup.log" >&2; die "bench/patterns.sql failed"; }
fi

TRIGGER_SUMMARY="$(q "SELECT count(*) FILTER (WHERE enabled) || ' enabled triggers over '
                           || (SELECT count(DISTINCT e) FROM engage.triggers t2,
                                 jsonb_array_elements_text(CASE jsonb_typeof(t2.definition::text::jsonb -> 'event')
                                   WHEN 'array' THEN t2.definition::text::jsonb -> 'event'
                                   ELSE jsonb_build_array(t2.definition::text::jsonb -> 'event') END) e
                               WHERE t2.enabled)
                           || ' event names; ' || count(*) FILTER (WHERE definition::text::jsonb ? 'where')
                           || ' with property predicates, ' || count(*) FILTER (WHERE definition::text::jsonb ? 'cap')
                           || ' with caps, ' || count(*) FILTER (WHERE definition::text::jsonb ? 'pattern')
                           || ' pattern triggers'
                    FROM engage.triggers" 2>/dev/null)" \
  || TRIGGER_SUMMARY="$(q "SELECT count(*) FROM engage.triggers WHERE enabled") enabled triggers"
ENABLED="$(q "SELECT count(*) FROM engage.triggers WHERE enabled")"
[ "$ENABLED" = "$EXPECTED_TRIGGERS" ] || die "expected $EXPECTED_TRIGGERS enabled triggers, found $ENABLED"
TRIGGERS_ON_EVENTS="$(q "SELECT string_agg(tgname, ', ' ORDER BY tgname) FROM pg_trigger
                         WHERE tgrelid = 'engage.events'::regclass AND NOT tgisinternal")"
TRIGGERS_ON_BARE="$(q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'bench.bare_events'::regclass")"
[ "$TRIGGERS_ON_BARE" = 0 ] || die "bench.bare_events unexpectedly has $TRIGGERS_ON_BARE triggers"
[ -n "$TRIGGERS_ON_EVENTS" ] || log "WARNING: engage.events has no trigger: (b) would measure nothing"
log "$TRIGGER_SUMMARY; triggers on engage.events: ${TRIGGERS_ON_EVENTS:-none}"

# --- measured runs -----------------------------------------------------------------------------
reset_state() { # $1 = bare|engage
  if [ "$1" = bare ]; then
    psql_db -d "$DB" -c "SET client_min_messages = warning" -c "TRUNCATE bench.bare_events" -c "CHECKPOINT" >/dev/null
  else
    psql_db -d "$DB" -c "SET client_min_messages = warning" \
      -c "TRUNCATE engage.events, engage.decisions, engage.outbox CASCADE" -c "CHECKPOINT" >/dev/null
  fi
}

rows_per_tx() { case "$1" in single_row) echo 1 ;; batch_500) echo 500 ;; esac; }

declare -A EVENTS_PER_SEC   # "workload variant" -> space-separated events/s of each round
declare -A WORK             # workload -> work done by the triggers in the last (b) round

run_one() { # $1 = workload, $2 = variant, $3 = round
  local w="$1" v="$2" r="$3" rows out rc tps processed failed stored eps target
  rows="$(rows_per_tx "$w")"
  reset_state "$v"
  out="$LOGS/pgbench_${w}_${v}_round$r.log"
  rc=0
  as_pg "$PG_BIN/pgbench" -n -M prepared -c "$BENCH_CLIENTS" -j "$BENCH_CLIENTS" -T "$BENCH_SECONDS" \
    -h "$SOCK" -p "$BENCH_PORT" -U "$PG_SUPERUSER" -f "$SCRIPTS/${w}_$v.sql" "$DB" >"$out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] || grep -q 'aborted' "$out"; then
    cat "$out" >&2
    die "pgbench failed for $w / $v (exit $rc)"
  fi
  tps="$(awk '/^tps = / { print $3; exit }' "$out")"
  processed="$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' "$out")"
  processed="${processed%%/*}"
  failed="$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$out")"
  if [ -z "$tps" ] || [ -z "$processed" ]; then
    cat "$out" >&2
    die "could not read tps from pgbench output ($out)"
  fi
  [ "${failed:-0}" = 0 ] || { cat "$out" >&2; die "pgbench reported $failed failed transactions for $w / $v"; }
  if [ "$v" = bare ]; then target=bench.bare_events; else target=engage.events; fi
  stored="$(q "SELECT count(*) FROM $target")"
  if [ "$stored" != "$((processed * rows))" ]; then
    log "WARNING: $w / $v: pgbench processed $processed transactions x $rows rows but $target holds $stored rows"
  fi
  eps="$(awk -v t="$tps" -v n="$rows" 'BEGIN { printf "%.0f", t * n }')"
  EVENTS_PER_SEC["$w $v"]="${EVENTS_PER_SEC["$w $v"]:-} $eps"
  log "round $r/$BENCH_ROUNDS $w $v: $eps events/s (tps $tps, $processed transactions, $stored rows stored)"
  if [ "$v" = engage ]; then
    WORK["$w"]="$(q "SELECT e.n, d.n, d.fired, d.cap, d.conflict, d.other, o.n
      FROM (SELECT count(*) AS n FROM engage.events) e,
           (SELECT count(*) AS n,
                   count(*) FILTER (WHERE outcome::text = 'fired') AS fired,
                   count(*) FILTER (WHERE outcome::text = 'suppressed' AND reason::text = 'cap') AS cap,
                   count(*) FILTER (WHERE outcome::text = 'suppressed' AND reason::text = 'conflict') AS conflict,
                   count(*) FILTER (WHERE NOT (coalesce(outcome::text, '') = 'fired'
                                               OR (coalesce(outcome::text, '') = 'suppressed'
                                                   AND coalesce(reason::text, '') IN ('cap', 'conflict')))) AS other
              FROM engage.decisions) d,
           (SELECT count(*) AS n FROM engage.outbox) o")" \
      || { log "WARNING: could not count decisions and outbox rows"; WORK["$w"]=""; }
  fi
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR % 2) printf "%.0f", a[(NR + 1) / 2]; else printf "%.0f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

log "measuring: $BENCH_ROUNDS round(s) x 2 workloads x (bare, engage), ${BENCH_SECONDS}s each, $BENCH_CLIENTS clients"
for r in $(seq 1 "$BENCH_ROUNDS"); do
  # Alternate which variant goes first, so a slow drift of the machine does not favour one.
  if [ $((r % 2)) -eq 1 ]; then order="bare engage"; else order="engage bare"; fi
  for w in single_row batch_500; do
    for v in $order; do
      run_one "$w" "$v" "$r"
    done
  done
done

# --- report --------------------------------------------------------------------------------------
GIT_REV="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then
  GIT_REV="$GIT_REV (+ uncommitted changes)"
fi
PG_VERSION="$(q "SELECT version()")"
EXT_VERSION="$(q "SELECT extversion FROM pg_extension WHERE extname = 'pg_engage'")"
SO_INFO="$PKGLIBDIR/pg_engage.so, $(stat -c '%s bytes, built %y' "$PKGLIBDIR/pg_engage.so" | cut -d. -f1)"
# A Rust release build has no DWARF by default: debug info here usually means a debug build,
# whose numbers are not representative.
if command -v readelf >/dev/null 2>&1 && readelf -S "$PKGLIBDIR/pg_engage.so" 2>/dev/null | grep -q '\.debug_info'; then
  SO_INFO="$SO_INFO, has debug info (a debug build? install with --release)"
fi
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
CPU_MODEL="${CPU_MODEL:-unknown} ($(nproc) CPUs)"
MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || echo unknown)"
SETTINGS="$(q "SELECT string_agg(name || ' = ' || coalesce(nullif(current_setting(name), ''), ''''''), ', ' ORDER BY name)
               FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync',
                 'max_wal_size', 'checkpoint_timeout', 'wal_level', 'autovacuum', 'shared_preload_libraries')")"

LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
WARNINGS=""
if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l + 0 >= 0.5 * n) }'; then
  WARNINGS="${WARNINGS}WARNING: the machine was busy when the run started (1-minute load ${LOAD_START%% *} on $(nproc) CPUs): the figures may be skewed.
"
fi
if [ "$(stat -c %Y "$PKGLIBDIR/pg_engage.so")" != "$SO_MTIME_START" ]; then
  WARNINGS="${WARNINGS}WARNING: $PKGLIBDIR/pg_engage.so was replaced during the run: the figures may mix two builds.
"
fi

REPORT="$BENCH_DIR/report.txt"
{
  printf 'pg_engage insert-path benchmark (bench/run.sh)\n\n'
  printf 'date:        %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  printf 'commit:      %s\n' "$GIT_REV"
  printf 'postgresql:  %s\n' "$PG_VERSION"
  printf 'pg_engage:   %s (%s)\n' "$EXT_VERSION" "$SO_INFO"
  printf 'cpu:         %s\n' "$CPU_MODEL"
  printf 'memory:      %s\n' "$MEM"
  printf 'load avg:    %s before, %s after (1, 5, 15 min; other work on the machine skews the figures)\n' \
    "$LOAD_START" "$LOAD_END"
  printf 'settings:    %s\n' "$SETTINGS"
  printf 'pgbench:     -n -M prepared -c %s -j %s -T %s, %s round(s), runs interleaved, median reported\n' \
    "$BENCH_CLIENTS" "$BENCH_CLIENTS" "$BENCH_SECONDS" "$BENCH_ROUNDS"
  printf 'triggers:    %s\n\n' "$TRIGGER_SUMMARY"
  if [ -n "$WARNINGS" ]; then printf '%s\n' "$WARNINGS"; fi
  printf '%-16s %15s %17s %7s %8s\n' workload 'bare events/s' 'engage events/s' ratio target
  for w in single_row batch_500; do
    # shellcheck disable=SC2086  # the lists are space-separated numbers
    bare="$(median ${EVENTS_PER_SEC["$w bare"]})"
    # shellcheck disable=SC2086
    eng="$(median ${EVENTS_PER_SEC["$w engage"]})"
    ratio="$(awk -v b="$bare" -v e="$eng" 'BEGIN { if (b > 0) printf "%.2f", e / b; else print "n/a" }')"
    if [ "$w" = single_row ]; then label=single-row; target="$BENCH_TARGET_SINGLE"; else label=batch-500; target="$BENCH_TARGET_BATCH"; fi
    met="$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r + 0 >= t + 0) ? "" : "  (below target)" }')"
    printf '%-16s %15s %17s %7s %8s%s\n' "$label" "$bare" "$eng" "$ratio" ">= $target" "$met"
  done
  printf '\nevents/s = pgbench tps x rows per transaction (1 or 500); ratio = engage / bare.\n'
  printf '\nper-round events/s (in run order within each round: odd rounds bare first, even rounds engage first):\n'
  for w in single_row batch_500; do
    for v in bare engage; do
      printf '  %-11s %-7s %s\n' "$w" "$v" "${EVENTS_PER_SEC["$w $v"]# }"
    done
  done
  printf '\nwork done by the triggers in the last engage round (per event):\n'
  printf '  %-11s %9s %10s %7s %10s %14s %6s %8s\n' workload events decisions fired 'cap-supp' 'conflict-supp' other outbox
  for w in single_row batch_500; do
    if [ -z "${WORK[$w]:-}" ]; then
      printf '  %-11s (not available: the decision counts query failed)\n' "$w"
      continue
    fi
    IFS=$'\t' read -r n_ev n_dec n_fired n_cap n_conf n_other n_out <<<"${WORK[$w]}"
    awk -v w="$w" -v e="$n_ev" -v d="$n_dec" -v f="$n_fired" -v c="$n_cap" -v k="$n_conf" -v x="$n_other" -v o="$n_out" \
      'function per(v) { return (e > 0) ? sprintf("%.3f", v / e) : "n/a" }
       BEGIN { printf "  %-11s %9d %10s %7s %10s %14s %6s %8s\n", w, e, per(d), per(f), per(c), per(k), per(x), per(o) }'
  done
} >"$REPORT"

mkdir -p "$RESULTS_DIR"
cp "$REPORT" "$RESULTS_DIR/$RESULT_FILE"
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_UID:-}" ]; then
  chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$RESULTS_DIR" "$RESULTS_DIR/$RESULT_FILE" 2>/dev/null || true
fi
printf '\n'
cat "$REPORT"
printf '\nwritten to %s\n' "${RESULTS_DIR#"$REPO_ROOT"/}/$RESULT_FILE"
