# Helpers for the scripts that build images WITHOUT a registry from this host's files
# (make-base-image.sh, make-postgres-image.sh): sourced, not run.
#
#   binary_libs BINARY   prints the shared libraries BINARY loads (and its loader), one per line
#   add_path PATH        copies PATH into "$staging" at the same place (see below)

# binary_libs BINARY: ldd prints "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
# "/lib64/ld-linux-x86-64.so.2 (0x...)" for the loader, "linux-vdso.so.1 (0x...)" (kernel-provided:
# skipped), and exits non-zero with "not a dynamic executable" for a static binary, which then needs
# no library at all.
binary_libs() {
    local ldd_out line
    if ldd_out=$(ldd "$1" 2>&1); then
        while read -r line; do
            if [[ $line == *"=> not found"* ]]; then
                echo "stage: $1 needs a library this host does not have: $line" >&2
                exit 1
            elif [[ $line =~ \=\>\ (/[^ ]+) ]]; then
                echo "${BASH_REMATCH[1]}"
            elif [[ $line =~ ^(/[^ ]+) ]]; then
                echo "${BASH_REMATCH[1]}"
            fi
        done <<<"$ldd_out"
    elif [[ $ldd_out != *"not a dynamic executable"* && $ldd_out != *"statically linked"* ]]; then
        echo "stage: ldd $1 failed: $ldd_out" >&2
        exit 1
    fi
}


# Copy PATH into the staging dir at the same place. Every symlink met on the way (a directory such
# as /lib -> usr/lib, or the file itself as /lib64/ld-linux-x86-64.so.2 -> /lib/...) is recreated
# as the same symlink, and its target is copied too. Writes only ever go to canonical (symlink-free)
# paths under the staging dir, so an absolute symlink can never lead a write out onto the host.
declare -A seen=()
add_path() {
    local path=$1 prefix="" comp parent dest target
    [[ -n ${seen[$path]:-} ]] && return 0
    seen[$path]=1
    [[ -e $path ]] || { echo "stage: $path does not exist" >&2; return 1; }
    local -a comps
    IFS=/ read -r -a comps <<<"${path#/}"
    for comp in "${comps[@]}"; do
        [[ -z $comp ]] && continue
        prefix+="/$comp"
        if [[ -L $prefix ]]; then
            parent=$(readlink -f "$(dirname "$prefix")")
            dest="$staging${parent%/}/$comp"
            target=$(readlink "$prefix")
            if [[ ! -L $dest ]]; then
                mkdir -p "$staging$parent"
                ln -s "$target" "$dest"
            fi
            [[ $target == /* ]] || target="${parent%/}/$target"
            add_path "$target"
        fi
    done
    local real
    real=$(readlink -f "$path")
    if [[ -d $real ]]; then
        mkdir -p "$staging$real"
    else
        mkdir -p "$staging$(dirname "$real")"
        cp -p "$real" "$staging$real"
    fi
}
