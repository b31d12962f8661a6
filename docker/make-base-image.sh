#!/usr/bin/env bash
# Build the minimal base image `kith-base:local` WITHOUT a container registry.
#
#   docker/make-base-image.sh [--force] BINARY
#
# The image holds only what BINARY needs to run: the shared libraries `ldd` lists and the dynamic
# loader (copied at the same paths, symlinks such as /lib -> usr/lib and /lib64/ld-linux-*.so.2
# recreated as on this host), /etc/ssl/certs when present, an /etc/passwd and /etc/group with a
# `kith` user and group (uid/gid 10001), /tmp (1777) and /data (owned by kith). The staging dir is
# imported as a one-layer image with `tar | docker import`.
#
# Idempotent: when the image exists and was made from the same libraries (a fingerprint of their
# paths and contents, kept in the image as ENV KITH_BASE_FINGERPRINT), nothing is done. --force
# rebuilds it anyway. A binary that needs a different set of libraries (a new -sys dependency, a
# glibc update on the host) gets a new base image automatically.
#
# Environment: KITH_BASE_IMAGE (default kith-base:local).
set -euo pipefail

# shellcheck source=docker/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

readonly FORMAT=1 # bump when the layout below changes, so old base images are rebuilt
IMAGE=${KITH_BASE_IMAGE:-kith-base:local}
KITH_UID=10001
KITH_GID=10001

usage() {
    echo "usage: $0 [--force] BINARY" >&2
    exit 2
}

force=0
binary=
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        -h | --help) usage ;;
        -*) echo "make-base-image: unknown option $arg" >&2; usage ;;
        *)
            [[ -z $binary ]] || usage
            binary=$arg
            ;;
    esac
done
[[ -n $binary ]] || usage
if [[ ! -f $binary || ! -x $binary ]]; then
    echo "make-base-image: $binary is not an executable file" >&2
    exit 1
fi
for tool in docker ldd tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "make-base-image: $tool not found" >&2; exit 1; }
done

# --- the libraries the binary needs -------------------------------------------------------------
libs_out=$(binary_libs "$binary")
libs=()
[[ -z $libs_out ]] || mapfile -t libs <<<"$libs_out"

certs=
[[ -d /etc/ssl/certs ]] && certs=/etc/ssl/certs

fingerprint=$(
    {
        echo "format $FORMAT uid $KITH_UID gid $KITH_GID"
        for lib in "${libs[@]}"; do
            echo "$lib $(sha256sum <"$(readlink -f "$lib")" | cut -d' ' -f1)"
        done | sort
        if [[ -n $certs && -f $certs/ca-certificates.crt ]]; then
            echo "certs $(sha256sum <"$certs/ca-certificates.crt" | cut -d' ' -f1)"
        fi
    } | sha256sum | cut -c1-32
)

if [[ $force == 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    have=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" |
        sed -n 's/^KITH_BASE_FINGERPRINT=//p')
    if [[ $have == "$fingerprint" ]]; then
        echo "make-base-image: $IMAGE is up to date (fingerprint $fingerprint)"
        exit 0
    fi
    echo "make-base-image: $IMAGE was made for other libraries (${have:-no fingerprint}); rebuilding"
fi

staging=$(mktemp -d "${TMPDIR:-/tmp}/kith-base.XXXXXX")
trap 'rm -rf "$staging"' EXIT

for lib in "${libs[@]}"; do
    add_path "$lib"
done

mkdir -p "$staging"/{etc,tmp,data,usr/local/bin,run}
chmod 1777 "$staging/tmp"
if [[ -n $certs ]]; then
    mkdir -p "$staging/etc/ssl"
    # Dereferenced: the entries are symlinks into /usr/share/ca-certificates on Debian.
    cp -rL "$certs" "$staging/etc/ssl/certs"
fi
cat >"$staging/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
kith:x:$KITH_UID:$KITH_GID:kith:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$staging/etc/group" <<EOF
root:x:0:
kith:x:$KITH_GID:
nogroup:x:65534:
EOF
cat >"$staging/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
chmod 0644 "$staging/etc/passwd" "$staging/etc/group" "$staging/etc/nsswitch.conf"
if [[ $(id -u) == 0 ]]; then
    chown -R 0:0 "$staging"
    chown "$KITH_UID:$KITH_GID" "$staging/data"
    chmod 0755 "$staging/data"
    owner_args=(--numeric-owner)
else
    # Not root: cannot chown, so tar records root for everything and /data is left world-writable.
    chmod 0777 "$staging/data"
    owner_args=(--numeric-owner --owner=0 --group=0)
fi

env_args=(
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin"
    --change "ENV KITH_BASE_FINGERPRINT=$fingerprint"
    --change "WORKDIR /"
)
[[ -f $staging/etc/ssl/certs/ca-certificates.crt ]] &&
    env_args+=(--change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")

echo "make-base-image: importing $IMAGE (${#libs[@]} libraries, fingerprint $fingerprint)"
tar "${owner_args[@]}" -C "$staging" -c . |
    docker import "${env_args[@]}" --message "kith base: libraries of $(basename "$binary")" - "$IMAGE" >/dev/null
docker image inspect -f "make-base-image: $IMAGE {{.Id}} {{.Size}} bytes" "$IMAGE"
