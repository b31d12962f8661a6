#!/usr/bin/env bash
# Build the image `kith:local` from a prebuilt `kith` binary, without any container registry.
#
#   docker/build-local-image.sh [--force-base] BINARY
#
# 1. docker/make-base-image.sh BINARY makes (or reuses) kith-base:local, holding the binary's
#    shared libraries;
# 2. docker/Dockerfile.local is built in a temporary context that holds only the binary (debug
#    info stripped unless KITH_IMAGE_STRIP=0), so the repository is never sent to the daemon.
#
# Environment: KITH_IMAGE (default kith:local), KITH_BASE_IMAGE (default kith-base:local),
# KITH_IMAGE_STRIP (default 1).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=${KITH_IMAGE:-kith:local}
export KITH_BASE_IMAGE=${KITH_BASE_IMAGE:-kith-base:local}

base_args=()
binary=
for arg in "$@"; do
    case $arg in
        --force-base) base_args+=(--force) ;;
        -*) echo "usage: $0 [--force-base] BINARY" >&2; exit 2 ;;
        *) binary=$arg ;;
    esac
done
if [[ -z $binary ]]; then
    echo "usage: $0 [--force-base] BINARY" >&2
    exit 2
fi
if [[ ! -f $binary || ! -x $binary ]]; then
    echo "build-local-image: $binary is not an executable file (build it with: cargo build -p kith)" >&2
    exit 1
fi

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
old_image=$(image_id "$IMAGE")
old_base=$(image_id "$KITH_BASE_IMAGE")

bash "$here/make-base-image.sh" "${base_args[@]}" "$binary"

context=$(mktemp -d "${TMPDIR:-/tmp}/kith-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$here/Dockerfile.local" "$context/Dockerfile"
if [[ ${KITH_IMAGE_STRIP:-1} != 0 ]] && command -v strip >/dev/null; then
    strip --strip-debug -o "$context/kith" "$binary"
else
    cp "$binary" "$context/kith"
fi
chmod 0755 "$context/kith"

echo "build-local-image: building $IMAGE from $binary ($(du -h "$context/kith" | cut -f1) in context)"
docker build --quiet --build-arg "BASE_IMAGE=$KITH_BASE_IMAGE" -t "$IMAGE" "$context" >/dev/null
docker image inspect -f "build-local-image: $IMAGE {{.Id}} {{.Size}} bytes" "$IMAGE"

# Drop the images this build replaced, so repeated runs do not pile up untagged images. Still in
# use (a running container, another tag)? Then docker refuses and they stay.
[[ -n $old_image && $old_image != "$(image_id "$IMAGE")" ]] && docker image rm "$old_image" >/dev/null 2>&1
[[ -n $old_base && $old_base != "$(image_id "$KITH_BASE_IMAGE")" ]] && docker image rm "$old_base" >/dev/null 2>&1
exit 0
