#!/usr/bin/env bash
# Installs what building and testing pg_engage needs on Debian 12, and nothing that is there
# already: PostgreSQL 15 with its server headers, clang (for pgrx's bindgen), sudo (to run
# PostgreSQL as the non-root `postgres` user), openssl (the tests make a certificate for their
# STARTTLS mail server), postgres_exporter (the operations test scrapes ops/postgres_exporter.yml
# through it), pg_cron (tests/tests/pg_cron.rs), cargo-pgrx 0.18.0, and `cargo pgrx init`.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config openssl prometheus-postgres-exporter
          postgresql-15-cron)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0'; then
    echo "setup: installing cargo-pgrx 0.18.0 (takes a few minutes)"
    cargo install cargo-pgrx --version 0.18.0 --locked --quiet
fi

if ! grep -qs '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

# PostgreSQL refuses to run as root: tests, demo and benchmark run it as this user.
id postgres >/dev/null 2>&1 || { echo "setup: the postgres OS user is missing" >&2; exit 1; }
