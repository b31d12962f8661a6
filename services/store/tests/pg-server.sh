#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store's tests (and CI): `start DIR` initialises a cluster
# in DIR (trust auth, 127.0.0.1 on a random free port, its unix socket in DIR), starts it and
# prints its URL; `stop DIR` stops it and removes DIR. initdb refuses to run as root, so as root
# the server runs as `postgres` (or a `kithpg` system user, created if neither exists).
set -euo pipefail

cmd=${1:?usage: pg-server.sh start|stop DIR}
dir=${2:?usage: pg-server.sh start|stop DIR}

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb && -x $d/pg_ctl ]] && { echo "$d"; return 0; }
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

pguser=
if [[ $(id -u) == 0 ]]; then
    if id postgres >/dev/null 2>&1; then
        pguser=postgres
    else
        id kithpg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin kithpg
        pguser=kithpg
    fi
fi
as_pg() {
    if [[ -n $pguser ]]; then runuser -u "$pguser" -- "$@"; else "$@"; fi
}

bin=$(bindir) || { echo "pg-server.sh: no initdb/pg_ctl found (install postgresql-15)" >&2; exit 1; }

case $cmd in
start)
    mkdir -p "$dir"
    chmod 700 "$dir"
    [[ -z $pguser ]] || chown "$pguser" "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    for _ in $(seq 20); do
        port=$((20000 + RANDOM % 40000))
        if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null 2>&1; then
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            exit 0
        fi
    done
    echo "pg-server.sh: could not start postgres; log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
    ;;
stop)
    [[ -d $dir/data ]] && as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: pg-server.sh start|stop DIR" >&2
    exit 2
    ;;
esac
