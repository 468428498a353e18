#!/usr/bin/env bash
# Runs every test of pg_engage and ends with one line "N passed, N failed" over all suites:
#   1. cargo pgrx test: Rust unit tests and #[pg_test] in-database tests (a throwaway cluster),
#      one at a time: they share one database, and two tests whose transactions insert events for
#      the same customer lock slots in several statements can deadlock each other (README,
#      "Isolation levels"), which made the suite fail now and then;
#   2. cargo pgrx install --release (and the released versions' scripts of sql/versions/, for the
#      upgrade test), then the integration tests in tests/, which start their own PostgreSQL
#      clusters with the installed extension.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
LOGS=target/test-logs
mkdir -p "$LOGS"
passed=0 failed=0 broken=0

# Runs one suite, shows its output, and adds its "test result:" lines to the totals.
suite() {
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$LOGS/$name.log"
    local status=${PIPESTATUS[0]}
    local p f
    p=$(grep -aoE 'test result: [A-Za-z]+\. [0-9]+ passed' "$LOGS/$name.log" | awk '{s+=$4} END {print s+0}')
    f=$(grep -aoE '[0-9]+ failed' "$LOGS/$name.log" | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p)) failed=$((failed + f))
    if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "== $name exited with status $status without a failed test: counted as broken"
        broken=$((broken + 1))
    fi
}

if [ "$(id -u)" -eq 0 ]; then
    # pgrx needs the data directory's parent to be writable by the user PostgreSQL runs as.
    work=/var/tmp/pg_engage-test
    rm -rf "$work" && mkdir -p "$work" && chown postgres: "$work"
    suite in-database env RUST_TEST_THREADS=1 cargo pgrx test pg15 --runas postgres --pgdata "$work/pgdata"
    suite install cargo pgrx install --release --pg-config "$PG_CONFIG"
    as_root=()
else
    suite in-database env RUST_TEST_THREADS=1 cargo pgrx test pg15
    suite install cargo pgrx install --sudo --release --pg-config "$PG_CONFIG"
    as_root=(sudo)
fi
# The released versions' install scripts, for the upgrade test (tests/tests/upgrade.rs) to
# create an old version and update it; `cargo pgrx install` installs the update scripts.
"${as_root[@]}" install -m 644 sql/versions/*.sql "$("$PG_CONFIG" --sharedir)/extension/"
suite integration cargo test -p pg_engage_it --no-fail-fast

echo
echo "$passed passed, $((failed + broken)) failed"
[ "$failed" -eq 0 ] && [ "$broken" -eq 0 ]
