#!/usr/bin/env bash
# A throwaway PostgreSQL for the test suite: 127.0.0.1:55432, superuser `postgres` (trust auth),
# database `avatarctl`. Installs Debian's `postgresql` package when no server binaries are found.
# Idempotent and quick when the server already runs. Exits non-zero when PostgreSQL cannot be had,
# so .ci/run runs the suite on SQLite alone.
set -euo pipefail

PORT="${PG_PORT:-55432}"
DATA_DIR="${PG_DATA_DIR:-${TMPDIR:-/tmp}/avatarctl-pg-${PORT}}"
DB="avatarctl"

log() { echo "postgres.sh: $*" >&2; }
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

BIN="$(find_bin)"
if [ -z "$BIN" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no PostgreSQL binaries and no apt-get: skipping PostgreSQL"
        exit 1
    fi
    log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; } </dev/null >&2; then
        log "apt-get could not install postgresql: skipping PostgreSQL"
        exit 1
    fi
    BIN="$(find_bin)"
    [ -n "$BIN" ] || { log "postgresql installed but no server binaries found"; exit 1; }
fi

# initdb and the server refuse to run as root: use the `postgres` system user then.
AS=()
if [ "$(id -u)" = 0 ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    AS=(runuser -u postgres --)
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    if [ ! -s "$DATA_DIR/PG_VERSION" ]; then
        rm -rf "$DATA_DIR"
        mkdir -p "$DATA_DIR"
        [ "${#AS[@]}" = 0 ] || chown postgres: "$DATA_DIR"
        "${AS[@]}" "$BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    # fsync off: a disposable cluster for tests, nothing to keep across a crash.
    "${AS[@]}" "$BIN/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 \
        -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DATA_DIR -c fsync=off" start >/dev/null
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -tAq)
if [ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    "${PSQL[@]}" -c "CREATE DATABASE $DB"
fi
log "PostgreSQL ready on 127.0.0.1:$PORT (database $DB)"
