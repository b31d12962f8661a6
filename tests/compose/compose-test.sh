#!/usr/bin/env bash
# End-to-end test of deployment mode 3: Kith's services under Docker Compose, from one image.
#
#   bash tests/compose/compose-test.sh [KITH_BINARY]     (default: target/debug/kith)
#
# 1. builds kith:local from KITH_BINARY with docker/build-local-image.sh (no registry needed);
# 2. creates an identity on the host with `kith init` in a temporary data dir;
# 3. starts compose.yaml under a unique project name, with that data dir bind-mounted and the
#    passphrase as a compose secret, identity published on a free 127.0.0.1 port;
# 4. waits for the identity container's healthcheck to report healthy;
# 5. from the host, over TCP with the bearer-token cookie the container wrote: `id show` (same
#    identity as init), `id sign` from stdin (a signature that `id verify` accepts), and a call
#    with a wrong token, which must fail as unauthenticated;
# 6. waits for the transport container (its key delegated by identity over gRPC), reads its DHT,
#    NAT and peers over TCP with its cookie, and has a node on the host connect to it over the
#    published UDP port (QUIC between the two keys);
# 7. waits for the PostgreSQL container (built from this host's PostgreSQL, no registry) and the
#    store container on it; appends entries through the store's API over TCP, reads them back,
#    finds them in PostgreSQL (the store's own `kith store stats` inside the container, on the
#    database URL), restarts the store container and reads them again;
# 8. always tears the project down (`down -v`), printing the containers' logs on failure.
#
# Needs: docker with `docker compose` or `docker-compose`. Exits non-zero on any failure.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
started=$SECONDS

log() { printf 'compose-test: %s\n' "$*"; }
fail() {
    printf 'compose-test: FAIL: %s\n' "$*" >&2
    exit 1
}

binary=${1:-$root/target/debug/kith}
[[ -f $binary && -x $binary ]] || fail "no kith binary at $binary (build it with: cargo build -p kith)"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

command -v docker >/dev/null || fail "docker not found"
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is available"
fi
docker info >/dev/null 2>&1 || fail "the docker daemon is not reachable"

# --- the image ----------------------------------------------------------------------------------
export KITH_IMAGE=kith:local
bash "$root/docker/build-local-image.sh" "$binary" || fail "building $KITH_IMAGE failed"
export KITH_POSTGRES_IMAGE=kith-postgres:local
bash "$root/docker/make-postgres-image.sh" || fail "building $KITH_POSTGRES_IMAGE failed"

# --- a data dir with an identity, made on the host ----------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kith-compose.XXXXXX")
project=kith-ci-$$
compose() { "${compose_cmd[@]}" --project-directory "$root" -f "$root/compose.yaml" -p "$project" "$@"; }

up=0
cleanup() {
    local status=$?
    set +e
    if [[ $up == 1 ]]; then
        if [[ $status != 0 ]]; then
            echo "---- docker compose ps ----" >&2
            compose ps >&2
            echo "---- docker compose logs ----" >&2
            compose logs --no-color --timestamps >&2
            echo "---- end of logs ----" >&2
        fi
        compose down -v --remove-orphans >/dev/null 2>&1 || echo "compose-test: warning: 'down -v' failed for project $project" >&2
    fi
    rm -rf "$tmp"
    if [[ $status == 0 ]]; then
        log "PASS in $((SECONDS - started))s"
    else
        log "FAILED after $((SECONDS - started))s (exit $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

data=$tmp/data
mkdir -m 0700 "$data" "$tmp/secrets"
passfile=$tmp/secrets/passphrase
(umask 077 && printf 'compose-test %s %s\n' "$$" "$RANDOM$RANDOM" >"$passfile")
pgpassfile=$tmp/secrets/pg-password
printf 'pg %s%s\n' "$RANDOM" "$RANDOM" >"$pgpassfile"
chmod 0644 "$pgpassfile" # read by the postgres user in its container; the dir stays 0700

# The 24 words go to stderr in --json mode: keep them out of the CI log (throwaway identity anyway).
if ! KITH_INSECURE_FAST_KDF=1 KITH_PASSPHRASE_FILE=$passfile \
    "$binary" --home "$data" init --name compose --json >"$tmp/init.json" 2>"$tmp/init.err"; then
    fail "kith init failed: $(grep -v -i -E 'words|mnemonic' "$tmp/init.err" | head -5)"
fi

# json_get FILE KEY: a top-level string field of a JSON document.
json_get() {
    if command -v jq >/dev/null; then
        jq -er --arg k "$2" '.[$k] // empty | strings' "$1" 2>/dev/null || true
    else
        python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print(v if isinstance(v,str) else "")' "$1" "$2" 2>/dev/null || true
    fi
}

identity_key=$(json_get "$tmp/init.json" identity_public_key)
[[ $identity_key =~ ^[0-9a-f]{64}$ ]] || fail "kith init --json gave no identity_public_key: $(head -c 300 "$tmp/init.json")"
log "created identity $identity_key on the host"

# --- a free port on 127.0.0.1 -------------------------------------------------------------------
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    return 1
}
port=$(free_port) || fail "found no free port"

# --- compose up ---------------------------------------------------------------------------------
export KITH_DATA_DIR=$data
export KITH_PASSPHRASE_FILE_HOST=$passfile
export KITH_IDENTITY_PORT=$port
tport=$(free_port) || fail "found no free port"
uport=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])') ||
    fail "found no free UDP port"
export KITH_TRANSPORT_PORT=$tport KITH_TRANSPORT_UDP_PORT=$uport
sport=$(free_port) || fail "found no free port"
export KITH_STORE_PORT=$sport KITH_PG_PASSWORD_FILE_HOST=$pgpassfile
KITH_UID=$(id -u)
KITH_GID=$(id -g)
export KITH_UID KITH_GID
export KITH_HEALTHCHECK_INTERVAL=1s
export KITH_LOG=info

log "starting project $project (${compose_cmd[*]}), identity on 127.0.0.1:$port"
up=1
compose up -d --no-build || fail "compose up failed"

# wait_healthy SERVICE: waits for the container's healthcheck; prints the container id.
wait_healthy() {
    local service=$1 cid state status health restarts deadline=$((SECONDS + 90))
    cid=$(compose ps -q "$service")
    [[ -n $cid ]] || fail "compose ps shows no $service container"
    while :; do
        state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}} {{.RestartCount}}' "$cid") ||
            fail "docker inspect $cid failed"
        read -r status health restarts <<<"$state"
        [[ $health == healthy ]] && break
        [[ $health == no-healthcheck ]] && fail "the $service container has no healthcheck"
        ((restarts < 3)) || fail "the $service container keeps restarting ($restarts restarts, state $status)"
        ((SECONDS < deadline)) || fail "the $service container is not healthy after 90s (state $status, health $health)"
        sleep 1
    done
    log "$service container is healthy" >&2
    echo "$cid"
}

cid=$(wait_healthy identity)
published=$(docker port "$cid" 7001/tcp)
[[ $published == "127.0.0.1:$port" ]] || fail "port 7001 is published as '$published', expected only 127.0.0.1:$port"

cookie=$data/run/identity.cookie
[[ -f $cookie ]] || fail "the service wrote no cookie at $cookie"
mode=$(stat -c %a "$cookie")
[[ $mode == 600 ]] || fail "cookie $cookie has mode $mode, expected 600"

# --- calls from the host over gRPC --------------------------------------------------------------
endpoint=tcp://127.0.0.1:$port
kith() { "$binary" --home "$data" --endpoint "$endpoint" "$@"; }

kith --token-file "$cookie" health --service identity >/dev/null 2>"$tmp/health.err" ||
    fail "kith health from the host failed: $(cat "$tmp/health.err")"

kith --token-file "$cookie" --json id show >"$tmp/show.json" 2>"$tmp/show.err" ||
    fail "kith id show over $endpoint failed: $(cat "$tmp/show.err")"
shown=$(json_get "$tmp/show.json" identity_public_key)
[[ $shown == "$identity_key" ]] || fail "id show returned identity_public_key '$shown', expected '$identity_key'"
log "id show over TCP: identity matches"

message="compose test message $$"
printf '%s' "$message" | kith --token-file "$cookie" --json id sign --context ci/compose - \
    >"$tmp/sign.json" 2>"$tmp/sign.err" ||
    fail "kith id sign over $endpoint failed: $(cat "$tmp/sign.err")"
signature=$(json_get "$tmp/sign.json" signature)
signer=$(json_get "$tmp/sign.json" public_key)
[[ $signature =~ ^[0-9a-f]{128}$ ]] || fail "id sign returned no 64-byte hex signature: $(head -c 300 "$tmp/sign.json")"
# Verified locally (no --endpoint): the signature must hold over exactly the bytes sent on stdin.
printf '%s' "$message" | "$binary" --home "$tmp/empty-home" id verify --context ci/compose \
    --public-key "$signer" --signature "$signature" - >/dev/null 2>"$tmp/verify.err" ||
    fail "the signature from the container does not verify: $(cat "$tmp/verify.err")"
log "id sign over TCP: signature by $signer verifies"

# A wrong credential: a well-formed token (64 hex, 0600) that is not the service's.
bad=$tmp/bad.cookie
(umask 077 && printf '%064x\n' 0 >"$bad")
[[ $(tr -d '\n' <"$bad") != "$(tr -d '\n' <"$cookie")" ]] || fail "the generated wrong token equals the real one"
if kith --token-file "$bad" --json id show >"$tmp/bad.out" 2>"$tmp/bad.err"; then
    fail "id show with a wrong token succeeded: $(head -c 300 "$tmp/bad.out")"
fi
grep -q -i -E 'unauthenticated|credential' "$tmp/bad.err" ||
    fail "id show with a wrong token failed without naming the credential: $(cat "$tmp/bad.err")"
[[ $(grep -c . "$tmp/bad.err") == 1 ]] || fail "the error for a wrong token is not one line: $(cat "$tmp/bad.err")"
log "a wrong token is refused: $(cat "$tmp/bad.err")"

# --- the transport container: its key came from identity; its API over TCP ----------------------
tcid=$(wait_healthy transport)
published=$(docker port "$tcid" 7002/tcp)
[[ $published == "127.0.0.1:$tport" ]] || fail "port 7002 is published as '$published', expected only 127.0.0.1:$tport"
tcookie=$data/run/transport.cookie
[[ -f $tcookie && $(stat -c %a "$tcookie") == 600 ]] || fail "the transport wrote no 0600 cookie at $tcookie"
tkith() { "$binary" --home "$data" --endpoint "tcp://127.0.0.1:$tport" --token-file "$tcookie" "$@"; }

tkith --json dht status >"$tmp/dht.json" 2>"$tmp/dht.err" || fail "kith dht status failed: $(cat "$tmp/dht.err")"
node_id=$(json_get "$tmp/dht.json" node_id)
[[ $node_id =~ ^[0-9a-f]{64}$ ]] || fail "dht status gave no node id: $(head -c 300 "$tmp/dht.json")"
tkith --json nat status >"$tmp/nat.json" 2>"$tmp/nat.err" || fail "kith nat status failed: $(cat "$tmp/nat.err")"
mapping=$(json_get "$tmp/nat.json" mapping)
[[ -n $mapping ]] || fail "nat status gave no mapping: $(head -c 300 "$tmp/nat.json")"
tkith --json peer list >"$tmp/peers.json" 2>"$tmp/peers.err" || fail "kith peer list failed: $(cat "$tmp/peers.err")"
log "transport over TCP: dht node $node_id, nat $mapping"

# A node on the host dials the container's node over its published UDP port: QUIC between the
# keys, the container's key being the identity's delegated one.
host=$tmp/host
mkdir -m 0700 "$host"
KITH_INSECURE_FAST_KDF=1 KITH_PASSPHRASE_FILE=$passfile "$binary" --home "$host" init --name host >/dev/null 2>&1 ||
    fail "kith init on the host failed"
KITH_PASSPHRASE_FILE=$passfile "$binary" --home "$host" --json node up --bind 127.0.0.1:0 --no-mdns \
    >"$tmp/host-node.json" 2>"$tmp/host-node.err" &
host_pid=$!
for _ in $(seq 1 100); do
    [[ -S $host/run/transport.sock ]] && break
    sleep 0.1
done
[[ -S $host/run/transport.sock ]] || fail "the host node did not start: $(cat "$tmp/host-node.err")"
# `serve transport` prints its peer id when ready (`  peer id    <hex>`).
container_peer=$(docker logs "$tcid" 2>&1 | grep -oE 'peer id +[0-9a-f]{64}' | head -1 | grep -oE '[0-9a-f]{64}') || true
[[ $container_peer =~ ^[0-9a-f]{64}$ ]] || { kill "$host_pid"; fail "the transport container printed no peer id"; }
if ! "$binary" --home "$host" --json peer connect "$container_peer" --addr "127.0.0.1:$uport" \
    >"$tmp/connect.json" 2>"$tmp/connect.err"; then
    kill "$host_pid"
    fail "the host node could not connect to the container's node: $(cat "$tmp/connect.err")"
fi
# While the host node runs, the container's node lists it (the accepted connection).
tkith --json peer list >"$tmp/peers.json" 2>/dev/null || { kill "$host_pid"; fail "kith peer list failed after the connect"; }
kill "$host_pid"
wait "$host_pid" 2>/dev/null || true
grep -q '"peer_id"' "$tmp/peers.json" || fail "the container's node does not list the host node: $(head -c 300 "$tmp/peers.json")"
log "a host node connected to the container's node $container_peer over UDP $uport"

# --- PostgreSQL and the store container: entries written through the store's API ----------------
wait_healthy postgres >/dev/null
scid=$(wait_healthy store)
published=$(docker port "$scid" 7003/tcp)
[[ $published == "127.0.0.1:$sport" ]] || fail "port 7003 is published as '$published', expected only 127.0.0.1:$sport"
scookie=$data/run/store.cookie
[[ -f $scookie && $(stat -c %a "$scookie") == 600 ]] || fail "the store wrote no 0600 cookie at $scookie"
skith() { "$binary" --home "$data" --endpoint "tcp://127.0.0.1:$sport" --token-file "$scookie" "$@"; }

skith --json log append compose "sealed one" "sealed two" "sealed three" >"$tmp/append.json" 2>"$tmp/append.err" ||
    fail "kith log append through the store failed: $(cat "$tmp/append.err")"
log_key=$(json_get "$tmp/append.json" key)
[[ $log_key =~ ^[0-9a-f]{64}$ ]] || fail "log append gave no log key: $(head -c 300 "$tmp/append.json")"
skith log read "$log_key" >"$tmp/read.txt" 2>"$tmp/read.err" || fail "kith log read failed: $(cat "$tmp/read.err")"
[[ $(cat "$tmp/read.txt") == $'sealed one\nsealed two\nsealed three' ]] || fail "log read gave: $(head -c 300 "$tmp/read.txt")"
if skith log append "Not A Name" x >/dev/null 2>"$tmp/badname.err"; then
    fail "an invalid log name was accepted"
fi

# The entries are in PostgreSQL: the store's own database, read inside its container.
docker exec "$scid" /usr/local/bin/kith --home /data --json store stats >"$tmp/stats.json" 2>"$tmp/stats.err" ||
    fail "kith store stats in the store container failed: $(cat "$tmp/stats.err")"
python3 - "$tmp/stats.json" <<'PY' || fail "store stats in the container: $(head -c 300 "$tmp/stats.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["backend"] == "postgres", s
assert s["logs"] == 1 and s["entries"] == 3, s
PY
log "store over TCP: 3 entries appended to log $log_key, held in PostgreSQL"

# Restarted, the store serves the same entries from PostgreSQL.
compose restart store >/dev/null 2>&1 || fail "compose restart store failed"
wait_healthy store >/dev/null
skith log read "$log_key" --start 1 >"$tmp/read2.txt" 2>"$tmp/read2.err" || fail "kith log read after restart failed: $(cat "$tmp/read2.err")"
[[ $(cat "$tmp/read2.txt") == $'sealed two\nsealed three' ]] || fail "after restart, log read gave: $(head -c 300 "$tmp/read2.txt")"
skith --json log append compose "sealed four" >"$tmp/append2.json" 2>/dev/null || fail "append after restart failed"
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["length"] == 4' "$tmp/append2.json" ||
    fail "after restart the log did not continue at 4: $(head -c 300 "$tmp/append2.json")"
log "store restarted: entries kept, appends continue"
