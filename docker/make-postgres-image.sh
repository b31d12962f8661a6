#!/usr/bin/env bash
# Build the PostgreSQL image `kith-postgres:local` WITHOUT a container registry, from this host's
# PostgreSQL binaries (Debian's postgresql-15: /usr/lib/postgresql/15).
#
#   docker/make-postgres-image.sh [--force]
#
# The image holds the server (postgres, initdb, pg_ctl, pg_isready) with the shared libraries
# they and the server's modules load, its share dir, UTC time-zone data, /bin/sh for the
# entrypoint, and a `postgres` user (999:999). The entrypoint initialises an empty data dir
# ($PGDATA, default /var/lib/postgresql/data) once, with user $POSTGRES_USER (kith), the password
# in $POSTGRES_PASSWORD_FILE or $POSTGRES_PASSWORD, scram-sha-256 authentication over TCP, and a
# database $POSTGRES_DB (kith); then it runs the server listening on every address.
#
# Idempotent like make-base-image.sh: a fingerprint of what went in is kept in the image, and an
# image with the same fingerprint is reused. Environment: KITH_POSTGRES_IMAGE
# (default kith-postgres:local), KITH_PG_BIN (default: the newest /usr/lib/postgresql/*/bin).
set -euo pipefail

# shellcheck source=docker/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

readonly FORMAT=1
IMAGE=${KITH_POSTGRES_IMAGE:-kith-postgres:local}
PG_UID=999
PG_GID=999

force=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        *) echo "usage: $0 [--force]" >&2; exit 2 ;;
    esac
done

bin=${KITH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
if [[ -z $bin || ! -x $bin/postgres ]]; then
    echo "make-postgres-image: no PostgreSQL server on this host (install postgresql-15)" >&2
    exit 1
fi
pgroot=$(dirname "$bin")
version=$(basename "$pgroot")
share=/usr/share/postgresql/$version
[[ -d $share ]] || { echo "make-postgres-image: $share missing" >&2; exit 1; }
for tool in docker ldd tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "make-postgres-image: $tool not found" >&2; exit 1; }
done

programs=("$bin/postgres" "$bin/initdb" "$bin/pg_ctl" "$bin/pg_isready" /bin/sh)
modules=()
# Server modules (plpgsql, text search dictionaries, ...); not the LLVM JIT, whose library alone
# would double the image (the server runs without JIT when it is missing).
[[ -d $pgroot/lib ]] && mapfile -t modules < <(find "$pgroot/lib" -maxdepth 1 -name '*.so' ! -name 'llvmjit*' | sort)
libs=()
for program in "${programs[@]}" "${modules[@]}"; do
    out=$(binary_libs "$program")
    [[ -z $out ]] || mapfile -t -O "${#libs[@]}" libs <<<"$out"
done
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)

entrypoint=$(cat <<'EOF'
#!/bin/sh
# Initialise $PGDATA once, then run the server (kith-postgres image).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=kith}"
: "${POSTGRES_DB:=kith}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    IFS= read -r POSTGRES_PASSWORD <"$POSTGRES_PASSWORD_FILE" || true
fi
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "kith-postgres: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
    exit 1
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # The password reaches initdb on a pipe: the image has no rm to clean up a file.
    printf '%s\n' "$POSTGRES_PASSWORD" |
        initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/dev/stdin --auth-local=trust \
            --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" -j postgres >/dev/null
    echo "kith-postgres: initialised $PGDATA (database $POSTGRES_DB)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
EOF
)

fingerprint=$(
    {
        echo "format $FORMAT uid $PG_UID version $version"
        for f in "${libs[@]}" "${programs[@]}" "${modules[@]}"; do
            echo "$f $(sha256sum <"$(readlink -f "$f")" | cut -d' ' -f1)"
        done | sort
        (cd "$share" && find . -type f -exec sha256sum {} + | sort)
        echo "$entrypoint"
    } | sha256sum | cut -c1-32
)

if [[ $force == 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    have=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" |
        sed -n 's/^KITH_POSTGRES_FINGERPRINT=//p')
    if [[ $have == "$fingerprint" ]]; then
        echo "make-postgres-image: $IMAGE is up to date (fingerprint $fingerprint)"
        exit 0
    fi
fi

staging=$(mktemp -d "${TMPDIR:-/tmp}/kith-postgres.XXXXXX")
trap 'rm -rf "$staging"' EXIT

for f in "${libs[@]}" "${programs[@]}" "${modules[@]}"; do
    add_path "$f"
done
add_path "$share"
cp -rL "$share/." "$staging$(readlink -f "$share")/"
mkdir -p "$staging/usr/share/zoneinfo"
cp -L /usr/share/zoneinfo/UTC "$staging/usr/share/zoneinfo/UTC"
[[ -d /usr/share/zoneinfo/Etc ]] && cp -rL /usr/share/zoneinfo/Etc "$staging/usr/share/zoneinfo/Etc"

mkdir -p "$staging"/{etc,tmp,usr/local/bin,var/lib/postgresql/data,var/run/postgresql}
chmod 1777 "$staging/tmp"
printf '%s\n' "$entrypoint" >"$staging/usr/local/bin/kith-postgres-entrypoint"
chmod 0755 "$staging/usr/local/bin/kith-postgres-entrypoint"
cat >"$staging/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
postgres:x:$PG_UID:$PG_GID:PostgreSQL:/var/lib/postgresql:/bin/sh
EOF
cat >"$staging/etc/group" <<EOF
root:x:0:
postgres:x:$PG_GID:
EOF
chmod 0644 "$staging/etc/passwd" "$staging/etc/group"
if [[ $(id -u) == 0 ]]; then
    chown -R 0:0 "$staging"
    chown -R "$PG_UID:$PG_GID" "$staging/var/lib/postgresql" "$staging/var/run/postgresql"
    chmod 0700 "$staging/var/lib/postgresql/data"
    owner_args=(--numeric-owner)
else
    echo "make-postgres-image: must run as root (the data dir must belong to the postgres user)" >&2
    exit 1
fi

echo "make-postgres-image: importing $IMAGE (PostgreSQL $version, ${#libs[@]} libraries)"
tar "${owner_args[@]}" -C "$staging" -c . |
    docker import \
        --change "ENV PATH=/usr/local/bin:$bin:/usr/bin:/bin" \
        --change "ENV PGDATA=/var/lib/postgresql/data" \
        --change "ENV TZ=UTC" \
        --change "ENV KITH_POSTGRES_FINGERPRINT=$fingerprint" \
        --change "USER $PG_UID:$PG_GID" \
        --change "WORKDIR /var/lib/postgresql" \
        --change "EXPOSE 5432" \
        --change 'ENTRYPOINT ["/usr/local/bin/kith-postgres-entrypoint"]' \
        --message "kith postgres: PostgreSQL $version from the host" - "$IMAGE" >/dev/null
docker image inspect -f "make-postgres-image: $IMAGE {{.Id}} {{.Size}} bytes" "$IMAGE"
