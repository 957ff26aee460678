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
#   were started with, PostgreSQL through pg_ctlcluster (its postmaster PID).
#
# Every function returns non-zero on failure instead of relying on `set -e`
# (callers run them inside `if`, where errexit does not apply).

SERVICES_APT_UPDATED=${SERVICES_APT_UPDATED:-0}
SERVICES_REDIS_PIDFILE=/run/herald-test-redis.pid
SERVICES_NATS_PIDFILE=/run/herald-test-nats.pid
SERVICES_STARTED_REDIS_PID=""
SERVICES_STARTED_NATS_PID=""
SERVICES_STARTED_PG_CLUSTER=""

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
svc_pg_version() {
    # Newest installed cluster version, e.g. "15".
    find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null \
        | sort -V | tail -n 1
}

svc_pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }

svc_pg_psql() { # DB SQL
    psql -X -w -h 127.0.0.1 -p 5432 -U postgres -d "$1" -v ON_ERROR_STOP=1 -Atc "$2"
}

svc_pg_trust_auth() {
    local ver=$1 hba
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    [ -f "$hba" ] || { svc_log "postgres: $hba missing"; return 1; }
    svc_log "postgres: configuring trust auth on loopback in $hba"
    cp -n "$hba" "$hba.orig" 2>/dev/null || true
    cat >"$hba" <<'EOF'
# Written by scripts/services.sh (herald test suite): trust on loopback only.
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
EOF
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || return 1
    sleep 1
}

ensure_postgres() {
    local ver
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1 \
        || [ -z "$(svc_pg_version)" ]; then
        svc_apt_install postgresql postgresql-client || { svc_log "postgres: install failed"; return 1; }
    fi
    ver=$(svc_pg_version)
    if [ -z "$ver" ]; then
        svc_log "postgres: no cluster under /etc/postgresql"
        return 1
    fi
    if ! svc_pg_ready; then
        if [ ! -d "/etc/postgresql/$ver/main" ]; then
            svc_log "postgres: creating cluster $ver/main"
            pg_createcluster "$ver" main || return 1
        fi
        if pg_ctlcluster --skip-systemctl-redirect "$ver" main status >/dev/null 2>&1; then
            svc_log "postgres: cluster $ver/main is running but not ready yet; waiting"
        else
            svc_log "postgres: starting cluster $ver/main"
            pg_ctlcluster --skip-systemctl-redirect "$ver" main start || {
                svc_log "postgres: start failed"
                return 1
            }
            SERVICES_STARTED_PG_CLUSTER=$ver
        fi
        if ! svc_wait 30 svc_pg_ready; then
            svc_log "postgres: not ready after 30 s"
            return 1
        fi
    fi
    # Trust auth and a `test` database, as the test suite expects.
    if ! svc_pg_psql postgres 'select 1' >/dev/null 2>&1; then
        svc_pg_trust_auth "$ver" || return 1
        if ! svc_pg_psql postgres 'select 1' >/dev/null; then
            svc_log "postgres: cannot connect as postgres@127.0.0.1 without a password"
            return 1
        fi
    fi
    if [ "$(svc_pg_psql postgres "select 1 from pg_database where datname = 'test'")" != 1 ]; then
        svc_log "postgres: creating database test"
        svc_pg_psql postgres 'create database test' >/dev/null || return 1
    fi
    svc_log "postgres: up${SERVICES_STARTED_PG_CLUSTER:+ (started cluster $ver/main)}"
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
        export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
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
        return 0
    fi
    svc_kill_pid nats "$SERVICES_STARTED_NATS_PID"
    SERVICES_STARTED_NATS_PID=""
    svc_kill_pid redis "$SERVICES_STARTED_REDIS_PID"
    SERVICES_STARTED_REDIS_PID=""
    if [ -n "$SERVICES_STARTED_PG_CLUSTER" ]; then
        svc_log "stopping postgres cluster $SERVICES_STARTED_PG_CLUSTER/main"
        pg_ctlcluster --skip-systemctl-redirect "$SERVICES_STARTED_PG_CLUSTER" main stop -m fast \
            >/dev/null 2>&1 || true
        SERVICES_STARTED_PG_CLUSTER=""
    fi
    rm -f "$SERVICES_REDIS_PIDFILE" "$SERVICES_NATS_PIDFILE"
}
