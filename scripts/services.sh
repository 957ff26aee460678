# shellcheck shell=bash
# Helper sourced by scripts/test: make sure the backing services the test
# suite may need (Redis, PostgreSQL, optionally NATS) are running on loopback.
#
# - A service that is already reachable is left alone.
# - A service that is not running is started; one that is not installed is
#   installed first (apt-get update once, then apt-get install -y).
# - Anything this helper starts is recorded and stopped again by
#   services_stop (call it from an EXIT trap) unless KEEP_SERVICES=1.
#   Nothing is ever stopped by process name: Redis and NATS by the PID they
#   were started with, PostgreSQL (always a throwaway cluster of our own, see
#   below) with pg_ctl on its data directory, which is then deleted.
#
# Every function returns non-zero on failure instead of relying on `set -e`
# (callers run them inside `if`, where errexit does not apply).

SERVICES_APT_UPDATED=${SERVICES_APT_UPDATED:-0}
SERVICES_REDIS_PIDFILE=/run/herald-test-redis.pid
SERVICES_NATS_PIDFILE=/run/herald-test-nats.pid
SERVICES_STARTED_REDIS_PID=""
SERVICES_STARTED_NATS_PID=""

svc_log() { printf '[services] %s\n' "$*" >&2; }

svc_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        svc_log "need root for: $*"
        return 1
    fi
}

# apt_install PKG... : apt-get update (once per run), then install.
svc_apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$SERVICES_APT_UPDATED" != 1 ]; then
        svc_log "apt-get update"
        svc_as_root apt-get update -q || return 1
        SERVICES_APT_UPDATED=1
    fi
    svc_log "apt-get install -y $*"
    svc_as_root apt-get install -y -q "$@" || return 1
}

# svc_wait SECONDS CMD... : poll CMD until it succeeds or time runs out.
svc_wait() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

svc_tcp_open() { # HOST PORT
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# ---------------------------------------------------------------- Redis ---
svc_redis_up() {
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
}

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && svc_redis_up; then
        svc_log "redis: up"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        svc_apt_install redis-server redis-tools || { svc_log "redis: install failed"; return 1; }
        # The package's postinst may have started it already.
        if svc_wait 5 svc_redis_up; then
            svc_log "redis: up (after install)"
            return 0
        fi
    fi
    svc_log "redis: starting"
    mkdir -p /var/lib/redis /var/log/redis || return 1
    rm -f "$SERVICES_REDIS_PIDFILE"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log \
        --pidfile "$SERVICES_REDIS_PIDFILE" || { svc_log "redis: start failed"; return 1; }
    if ! svc_wait 15 svc_redis_up; then
        svc_log "redis: not answering PING; log tail:"
        tail -n 20 /var/log/redis/ci.log >&2 2>/dev/null || true
        return 1
    fi
    svc_wait 5 test -s "$SERVICES_REDIS_PIDFILE" || true
    SERVICES_STARTED_REDIS_PID=$(cat "$SERVICES_REDIS_PIDFILE" 2>/dev/null || true)
    svc_log "redis: up (started, pid ${SERVICES_STARTED_REDIS_PID:-?})"
}

# ----------------------------------------------------------- PostgreSQL ---
# A PostgreSQL that already accepts `postgres` without a password on
# 127.0.0.1:$SERVICES_PG_PORT is used as it is. Otherwise this helper starts its
# own throwaway cluster (initdb into a temp dir, trust auth, loopback only, a
# free port) and services_stop stops and deletes it. The configuration of a
# cluster this helper did not create is never touched.
#
# HERALD_TEST_PG_PORT: the port of the existing server to try (default 5432);
# point it at a closed port to exercise the throwaway path.
SERVICES_PG_PORT=${HERALD_TEST_PG_PORT:-5432}
SERVICES_PG_URL=""
SERVICES_PG_TMP=""  # the throwaway cluster's directory (data/, socket, log)
SERVICES_PG_BIN=""

svc_pg_ready() { pg_isready -q -h 127.0.0.1 -p "$1"; }

svc_pg_psql() { # PORT DB SQL
    psql -X -w -h 127.0.0.1 -p "$1" -U postgres -d "$2" -v ON_ERROR_STOP=1 -Atc "$3"
}

# svc_pg_accepts PORT: a server there lets `postgres` in without a password.
svc_pg_accepts() {
    svc_pg_ready "$1" && svc_pg_psql "$1" postgres 'select 1' >/dev/null 2>&1
}

svc_pg_create_test_db() { # PORT
    if [ "$(svc_pg_psql "$1" postgres "select 1 from pg_database where datname = 'test'")" != 1 ]; then
        svc_log "postgres: creating database test on port $1"
        svc_pg_psql "$1" postgres 'create database test' >/dev/null || return 1
    fi
}

# Newest installed server binaries, e.g. /usr/lib/postgresql/15/bin.
svc_pg_bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null \
        | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && printf '%s\n' "$d"
}

# Runs a server binary as the owner of the throwaway cluster: PostgreSQL
# refuses to run as root, so root runs it as `postgres`.
svc_pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A TCP port on 127.0.0.1 nothing listens on (checked, not reserved: the
# caller retries if the server cannot bind it).
svc_free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! svc_tcp_open 127.0.0.1 "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

svc_pg_start_own() {
    local bin tmp port try
    bin=$(svc_pg_bindir) || { svc_log "postgres: no initdb/pg_ctl under /usr/lib/postgresql/*/bin"; return 1; }
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/herald-test-pg.XXXXXX") || return 1
    SERVICES_PG_TMP=$tmp
    SERVICES_PG_BIN=$bin
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$tmp" || return 1
    fi
    svc_log "postgres: creating a throwaway cluster in $tmp ($bin)"
    svc_pg_as_owner "$bin/initdb" -D "$tmp/data" -U postgres --auth=trust \
        -E UTF8 --locale=C --no-sync >"$tmp/initdb.log" 2>&1 || {
        svc_log "postgres: initdb failed; log tail:"
        tail -n 20 "$tmp/initdb.log" >&2
        return 1
    }
    for ((try = 0; try < 3; try++)); do
        port=$(svc_free_port) || { svc_log "postgres: no free port"; return 1; }
        # fsync off: the data is thrown away anyway.
        if svc_pg_as_owner "$bin/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 30 \
            -o "-p $port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off" \
            start >/dev/null; then
            if ! svc_wait 30 svc_pg_accepts "$port"; then
                svc_log "postgres: throwaway cluster not accepting connections; log tail:"
                tail -n 20 "$tmp/server.log" >&2
                return 1
            fi
            svc_pg_create_test_db "$port" || return 1
            SERVICES_PG_URL=postgres://postgres@127.0.0.1:$port/test
            svc_log "postgres: up (own throwaway cluster on port $port)"
            return 0
        fi
        svc_log "postgres: start on port $port failed; log tail:"
        tail -n 5 "$tmp/server.log" >&2 2>/dev/null || true
    done
    return 1
}

ensure_postgres() {
    if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        svc_apt_install postgresql-client || { svc_log "postgres: client install failed"; return 1; }
    fi
    if svc_pg_accepts "$SERVICES_PG_PORT"; then
        svc_pg_create_test_db "$SERVICES_PG_PORT" || return 1
        SERVICES_PG_URL=postgres://postgres@127.0.0.1:$SERVICES_PG_PORT/test
        svc_log "postgres: up (existing server on port $SERVICES_PG_PORT)"
        return 0
    fi
    svc_log "postgres: nothing on 127.0.0.1:$SERVICES_PG_PORT lets postgres in without a password"
    if [ -z "$(svc_pg_bindir)" ]; then
        svc_apt_install postgresql || { svc_log "postgres: install failed"; return 1; }
    fi
    svc_pg_start_own
}

# Stops and deletes the throwaway cluster, if this helper started one.
svc_pg_stop_own() {
    [ -n "$SERVICES_PG_TMP" ] || return 0
    svc_log "postgres: stopping and deleting the throwaway cluster in $SERVICES_PG_TMP"
    if [ -f "$SERVICES_PG_TMP/data/postmaster.pid" ]; then
        svc_pg_as_owner "$SERVICES_PG_BIN/pg_ctl" -D "$SERVICES_PG_TMP/data" -m fast -w -t 30 \
            stop >/dev/null 2>&1 || svc_log "postgres: pg_ctl stop failed"
    fi
    rm -rf "$SERVICES_PG_TMP"
    SERVICES_PG_TMP=""
    SERVICES_PG_URL=""
}

# ----------------------------------------------------------------- NATS ---
svc_nats_up() { svc_tcp_open 127.0.0.1 4222; }

ensure_nats() {
    if svc_nats_up; then
        svc_log "nats: up"
        return 0
    fi
    if [ ! -x /usr/sbin/nats-server ]; then
        svc_apt_install nats-server || { svc_log "nats: install failed"; return 1; }
        if svc_wait 3 svc_nats_up; then
            svc_log "nats: up (after install)"
            return 0
        fi
    fi
    svc_log "nats: starting"
    mkdir -p /var/lib/nats-server || return 1
    rm -f "$SERVICES_NATS_PIDFILE"
    start-stop-daemon --start --oknodo --background \
        --make-pidfile --pidfile "$SERVICES_NATS_PIDFILE" \
        --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log \
        || { svc_log "nats: start failed"; return 1; }
    SERVICES_STARTED_NATS_PID=$(cat "$SERVICES_NATS_PIDFILE" 2>/dev/null || true)
    if ! svc_wait 15 svc_nats_up; then
        svc_log "nats: port 4222 not open after 15 s; log tail:"
        tail -n 20 /var/log/nats-server.log >&2 2>/dev/null || true
        return 1
    fi
    svc_log "nats: up (started, pid ${SERVICES_STARTED_NATS_PID:-?})"
}

# Required: Redis and PostgreSQL. Optional: NATS (warning only).
ensure_services() {
    local rc=0
    ensure_redis || rc=1
    ensure_postgres || rc=1
    ensure_nats || svc_log "WARNING: NATS is not available (optional; continuing)"
    if [ "$rc" -eq 0 ]; then
        export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
        export DATABASE_URL=${DATABASE_URL:-$SERVICES_PG_URL}
        if svc_nats_up; then
            export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
        fi
    fi
    return "$rc"
}

svc_kill_pid() { # NAME PID
    local name=$1 pid=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    svc_log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Stop whatever ensure_services started (not what was already running).
services_stop() {
    if [ "${KEEP_SERVICES:-0}" = 1 ]; then
        if [ -n "$SERVICES_PG_TMP" ]; then
            local as=""
            [ "$(id -u)" -eq 0 ] && as="runuser -u postgres -- "
            svc_log "KEEP_SERVICES=1: throwaway postgres left running at $SERVICES_PG_URL; stop it" \
                "with: ${as}$SERVICES_PG_BIN/pg_ctl -D $SERVICES_PG_TMP/data stop && rm -rf $SERVICES_PG_TMP"
        fi
        return 0
    fi
    svc_kill_pid nats "$SERVICES_STARTED_NATS_PID"
    SERVICES_STARTED_NATS_PID=""
    svc_kill_pid redis "$SERVICES_STARTED_REDIS_PID"
    SERVICES_STARTED_REDIS_PID=""
    svc_pg_stop_own
    rm -f "$SERVICES_REDIS_PIDFILE" "$SERVICES_NATS_PIDFILE"
}
