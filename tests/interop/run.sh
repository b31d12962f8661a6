#!/usr/bin/env bash
# Interop test: a non-Rust gRPC client (Python grpcio, tests/interop/reflection_client.py) calls a
# real `kith serve identity` using nothing but server reflection, like grpcurl would.
#
#   bash tests/interop/run.sh [KITH_BINARY]     (default: target/debug/kith)
#
# 1. makes (once) a Python venv outside the checkout, in ${KITH_CACHE_DIR:-$HOME/.cache/kith}/
#    interop-venv, with the pinned packages below; it is rebuilt only when the pins or the Python
#    version change;
# 2. creates a throwaway identity in a temporary home and starts `kith serve identity` on a free
#    127.0.0.1 port and a unix socket, waiting for its JSON "ready" document;
# 3. runs the client over the unix socket (no token), over TCP with the cookie's bearer token, and
#    over TCP without a token (everything must be UNAUTHENTICATED);
# 4. always stops the server and removes the temporary home.
#
# Needs: python3 with venv/ensurepip (Debian: python3-venv) and PyPI. Exits non-zero on any failure.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
started=$SECONDS

log() { printf 'interop: %s\n' "$*"; }
fail() {
    printf 'interop: FAIL: %s\n' "$*" >&2
    exit 1
}

binary=${1:-$root/target/debug/kith}
[[ -f $binary && -x $binary ]] || fail "no kith binary at $binary (build it with: cargo build -p kith)"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

# --- the venv -----------------------------------------------------------------------------------
# Pinned, including the transitive ones, so every run installs the same thing.
pins=(
    grpcio==1.85.1
    grpcio-reflection==1.85.1
    grpcio-status==1.85.1
    googleapis-common-protos==1.76.0
    protobuf==7.36.2
    cryptography==50.0.2
    cffi==2.1.1
    pycparser==3.12
    typing_extensions==4.16.0
    blake3==1.0.11
)
command -v python3 >/dev/null || fail "python3 not found"
venv=${KITH_CACHE_DIR:-$HOME/.cache/kith}/interop-venv
stamp="$(python3 -c 'import sys; print(sys.version)' | head -1) | ${pins[*]}"
if [[ ! -x $venv/bin/python || $(cat "$venv/.kith-stamp" 2>/dev/null) != "$stamp" ]]; then
    t0=$SECONDS
    log "creating $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || fail "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${pins[@]}" ||
        fail "pip install into $venv failed"
    printf '%s\n' "$stamp" >"$venv/.kith-stamp"
    log "venv ready in $((SECONDS - t0))s"
else
    log "reusing $venv"
fi
py=$venv/bin/python

# --- a server -----------------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kith-interop.XXXXXX")
home=$tmp/home
server_pid=
cleanup() {
    local status=$?
    set +e
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    if [[ $status != 0 && -s $tmp/serve.err ]]; then
        echo "---- kith serve stderr (last 40 lines) ----" >&2
        tail -n 40 "$tmp/serve.err" >&2
        echo "---- end ----" >&2
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

# A throwaway identity; nothing from the caller's environment may point kith elsewhere.
unset KITH_HOME KITH_ENDPOINT KITH_TOKEN_FILE KITH_PASSPHRASE
export KITH_INSECURE_FAST_KDF=1 KITH_LOG=${KITH_LOG:-warn}
export KITH_PASSPHRASE_FILE=$tmp/passphrase
(umask 077 && printf 'interop %s %s\n' "$$" "$RANDOM$RANDOM" >"$KITH_PASSPHRASE_FILE")
# The 24 words go to stderr: keep them out of the log.
"$binary" --home "$home" --json init --name interop >"$tmp/init.json" 2>"$tmp/init.err" ||
    fail "kith init failed: $(grep -v -i -E 'words|mnemonic' "$tmp/init.err" | head -5)"

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
    fail "found no free port"
socket=$home/run/identity.sock
cookie=$home/run/identity.cookie

"$binary" --home "$home" --json serve identity --listen "tcp://127.0.0.1:$port" --listen "unix:$socket" \
    >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!

# The ready document is (pretty-printed) JSON on stdout once every listener is bound.
is_ready() {
    "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get("event")=="ready" else 1)' \
        "$tmp/serve.out" 2>/dev/null
}
deadline=$((SECONDS + 30))
until is_ready; do
    kill -0 "$server_pid" 2>/dev/null || { server_pid=; fail "kith serve exited before it was ready"; }
    ((SECONDS < deadline)) || fail "kith serve printed no ready document within 30s: $(head -c 300 "$tmp/serve.out")"
    sleep 0.1
done
[[ -S $socket ]] || fail "the ready server has no socket at $socket"
[[ -s $cookie ]] || fail "the ready server wrote no cookie at $cookie"
log "kith serve identity ready on tcp://127.0.0.1:$port and unix:$socket"

# --- the client ---------------------------------------------------------------------------------
client=$root/tests/interop/reflection_client.py
# grpc-core's default :authority for a unix target is the %-encoded socket path, which the server's
# HTTP/2 stack rejects; `localhost` is the convention grpc-go (and so grpcurl) uses for sockets.
# The client also reports, without failing, whether the default authority is still refused.
"$py" "$client" --target "unix:$socket" --authority localhost || fail "client over the unix socket"
"$py" "$client" --target "127.0.0.1:$port" --token-file "$cookie" || fail "client over TCP with the token"
"$py" "$client" --target "127.0.0.1:$port" --expect-unauthenticated || fail "client over TCP without a token"

kill -0 "$server_pid" 2>/dev/null || { server_pid=; fail "kith serve died during the test"; }
