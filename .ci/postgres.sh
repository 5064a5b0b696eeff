#!/usr/bin/env bash
# Install and start a local PostgreSQL for the sweep tests (tests/test_sweep_postgres.py).
#
# Debian 12 ships PostgreSQL 15. The script is idempotent: it installs only what is
# missing, creates the `main` cluster only if there is none, starts it only if it is
# down, and creates the user and database only once. Progress goes to stderr; stdout
# is a single `export` line, so CI can do:
#
#     eval "$(.ci/postgres.sh)"
#     pytest -m postgres tests/test_sweep_postgres.py
#
# Settings (environment): TIF_PG_USER, TIF_PG_PASSWORD, TIF_PG_DB (default: tif),
# TIF_PG_PORT (default: 5432), TIF_PG_VERSION (default: 15).
set -euo pipefail

PG_USER="${TIF_PG_USER:-tif}"
PG_PASSWORD="${TIF_PG_PASSWORD:-tif}"
PG_DB="${TIF_PG_DB:-tif}"
PG_PORT="${TIF_PG_PORT:-5432}"
PG_VERSION="${TIF_PG_VERSION:-15}"

say() { echo "postgres.sh: $*" >&2; }
# Root in CI containers; sudo on a developer machine.
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
as_postgres() { $SUDO -u postgres "$@"; }
if [ -z "$SUDO" ]; then as_postgres() { su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; }; fi

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -x "/usr/lib/postgresql/${PG_VERSION}/bin/postgres" ]; then
    say "installing postgresql-${PG_VERSION} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2
    $SUDO apt-get install -y -qq "postgresql-${PG_VERSION}" postgresql-client >&2
fi

if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "${PG_VERSION} main"; then
    say "creating cluster ${PG_VERSION}/main on port ${PG_PORT}"
    $SUDO pg_createcluster --port "${PG_PORT}" "${PG_VERSION}" main >&2
fi

# Containers have no systemd: pg_ctlcluster starts the server directly.
if ! pg_lsclusters -h | awk -v v="${PG_VERSION}" '$1==v && $2=="main" {print $4}' | grep -q online; then
    say "starting cluster ${PG_VERSION}/main"
    $SUDO pg_ctlcluster "${PG_VERSION}" main start >&2
fi
PORT_IN_USE="$(pg_lsclusters -h | awk -v v="${PG_VERSION}" '$1==v && $2=="main" {print $3}')"

for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "${PORT_IN_USE}" && break
    sleep 1
done
pg_isready -h 127.0.0.1 -p "${PORT_IN_USE}" >&2 || { say "server did not come up; see /var/log/postgresql/"; exit 1; }

psql_admin() { as_postgres psql -v ON_ERROR_STOP=1 -qAt -p "${PORT_IN_USE}" "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='${PG_USER}'")" != "1" ]; then
    say "creating user ${PG_USER}"
    psql_admin -c "CREATE ROLE \"${PG_USER}\" LOGIN PASSWORD '${PG_PASSWORD}'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='${PG_DB}'")" != "1" ]; then
    say "creating database ${PG_DB}"
    psql_admin -c "CREATE DATABASE \"${PG_DB}\" OWNER \"${PG_USER}\""
fi

URL="postgresql://${PG_USER}:${PG_PASSWORD}@127.0.0.1:${PORT_IN_USE}/${PG_DB}"
# Prove the URL works with password auth over TCP, the way the tests connect.
PGPASSWORD="${PG_PASSWORD}" psql -qAt -h 127.0.0.1 -p "${PORT_IN_USE}" -U "${PG_USER}" -d "${PG_DB}" -c "SELECT 1" >/dev/null
say "ready: ${URL}"
echo "export TIFRAMEWORK_TEST_POSTGRES_URL=${URL}"
