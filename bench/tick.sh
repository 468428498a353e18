#!/usr/bin/env bash
# pg_engage scheduler benchmark: how long engage.tick takes over a million profiles.
#
# Starts a throwaway PostgreSQL 15 cluster with the installed extension, writes BENCH_PROFILES
# profiles (time zone, birthday, renewal date) and three purchases per profile over a year
# (bench/tick_data.sql), and six scheduled triggers: inactivity after 30, 60 and 90 days, a
# birthday, a renewal reminder and a p(alive) prediction. Then it times two ticks, each deciding
# what it fires through the insert path:
#   * a daily tick: the window is the last 24 hours (a daily pg_cron job, or a catch-up);
#   * a minute tick: the window is the next minute (the scheduler's default interval), twice,
#     each in a new session, then three in one session, as the scheduler runs them;
#   * the minute tick at which it is next 09:00 in Sydney: the birthdays of one zone's profiles are
#     due (and, if that minute falls on another UTC day than now, the day's prediction pass).
# Results go to bench/results/tick-latest.txt.
#
# Usage, from the repository root:   bash bench/tick.sh
# Knobs: BENCH_PROFILES [1000000], BENCH_PORT [55493], BENCH_DIR [/tmp/pg_engage_bench_tick],
#        PG_BIN [/usr/lib/postgresql/15/bin], BENCH_SKIP_INSTALL [0]
set -euo pipefail
BENCH_PROFILES="${BENCH_PROFILES:-1000000}"
BENCH_PORT="${BENCH_PORT:-55493}"
BENCH_DIR="${BENCH_DIR:-/tmp/pg_engage_bench_tick}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$REPO_ROOT/bench/results/tick-latest.txt"

BENCH_NAME=tick
# shellcheck source=bench/cluster.sh
source "$REPO_ROOT/bench/cluster.sh"

log "writing $BENCH_PROFILES profiles and their purchases"
started=$(date +%s)
sizes=$("${psql[@]}" -d bench -At -v profiles="$BENCH_PROFILES" -f "$REPO_ROOT/bench/tick_data.sql" | tail -1)
log "written in $(( $(date +%s) - started )) s: profiles|events = $sizes"

# One tick at `moment`, after setting every trigger's progress to `from`; prints its time and
# the occasions fired per trigger. The session has listed the time zones first, as the
# scheduler's long-lived session has (engage.known_time_zones: about 0.1 s once per session).
tick() {
  local label=$1 from=$2 moment=$3
  "${psql[@]}" -d bench -c "INSERT INTO engage.tick_progress SELECT id, $from FROM engage.triggers
                            ON CONFLICT (trigger_id) DO UPDATE SET ticked_until = excluded.ticked_until" >/dev/null
  local out
  out=$("${psql[@]}" -d bench -At -F' ' -c "SELECT FROM engage.known_time_zones('{UTC}')" -c '\timing on' \
        -c "SELECT trigger || '=' || fired FROM engage.tick($moment, ahead_of_now => true) ORDER BY trigger")
  local ms fired
  ms=$(printf '%s\n' "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)
  fired=$(printf '%s\n' "$out" | grep -v '^Time:' | paste -sd' ')
  printf '%-52s %8.0f ms   %s\n' "$label" "$ms" "$fired"
}

{
  echo "pg_engage scheduler benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "profiles|events = $sizes; 6 scheduled triggers; occasions fired per trigger (decided through the insert path)"
  tick "daily tick (window: the last 24 hours)" "now() - interval '1 day'" "now()"
  tick "minute tick (window: the next minute)" "now()" "now() + interval '1 minute'"
  tick "minute tick again (window: the minute after)" "now() + interval '1 minute'" "now() + interval '2 minutes'"
  # As the scheduler runs them: one long-lived session, a tick a minute (plans and the zone list
  # kept from the first).
  "${psql[@]}" -d bench -c "INSERT INTO engage.tick_progress SELECT id, now() + interval '2 minutes' FROM engage.triggers
                            ON CONFLICT (trigger_id) DO UPDATE SET ticked_until = excluded.ticked_until" >/dev/null
  steady=$("${psql[@]}" -d bench -At -c '\timing on' \
           -c "SELECT count(*) FROM engage.tick(now() + interval '3 minutes', ahead_of_now => true)" \
           -c "SELECT count(*) FROM engage.tick(now() + interval '4 minutes', ahead_of_now => true)" \
           -c "SELECT count(*) FROM engage.tick(now() + interval '5 minutes', ahead_of_now => true)" \
           | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | xargs printf '%.0f ms, ')
  printf '%-52s %s\n' "three minute ticks in one session (as the scheduler)" "${steady%, }"
  next_9am_sydney="(date_trunc('day', now() AT TIME ZONE 'Australia/Sydney') + interval '1 day 9 hours') AT TIME ZONE 'Australia/Sydney'"
  tick "minute tick at the next 09:00 in Sydney" "$next_9am_sydney - interval '1 minute'" "$next_9am_sydney"
  echo "decisions written: $("${psql[@]}" -d bench -At -c 'SELECT count(*) FROM engage.decisions')"
} | tee "$RESULTS"
