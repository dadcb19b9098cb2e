#!/bin/sh
# ferry-api-symbols.sh [--map OUT] HEADER...: the names of the functions the
# public headers declare with FERRY_API, one a line, sorted: libferry's ABI.
# --map OUT writes them as a linker version script instead (exactly those
# global, everything else local). --check LIB compares them with what
# libferry.so exports (nm -D) and exits 1, naming each difference, unless
# they are the same.
set -eu
if [ "${1:-}" = --check ]; then
    lib=$2
    shift 2
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    "$0" "$@" >"$tmp"
    if ! nm -D --defined-only "$lib" | awk 'NF == 3 {print $3}' | sort -u | diff "$tmp" -; then
        echo "ferry-api-symbols.sh: $lib exports other than its FERRY_API functions" \
            "(< declared only, > exported only)" >&2
        exit 1
    fi
    echo "ferry-api-symbols.sh: $lib exports exactly its $(wc -l <"$tmp") FERRY_API functions"
    exit 0
fi
if [ "${1:-}" = --map ]; then
    out=$2
    shift 2
    { echo '{ global:'; "$0" "$@" | sed 's/$/;/'; echo 'local: *; };'; } >"$out.tmp"
    mv "$out.tmp" "$out"
    exit 0
fi
cat "$@" | tr '\n' ' ' | sed 's/;/;\n/g' | grep 'FERRY_API' |
    sed -n 's/.*[ *]\(ferry_[a-z0-9_]*\) *(.*/\1/p' | sort -u
