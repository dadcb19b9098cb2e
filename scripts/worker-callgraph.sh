#!/bin/sh
# worker-callgraph.sh: who calls whom across the files of libferry, read from
# the compiled objects (a file "calls" another when it has an undefined
# symbol the other defines), and the layering checks of STYLE.md 13: the
# data plane (UCX only) never calls up into the coordinator client, nor into
# the rpc layer (gRPC); and the coordinator client calls into the data plane
# only through its public API (the FERRY_API functions of the headers given
# to --api) and the few internal entries meant for it (CLIENT_ALLOWED below:
# worker/errors.h, worker/fork.h, worker/op_cancel.h), never through the
# rest of its internals (worker/ferry_int.h).
#
# usage: worker-callgraph.sh --dataplane "A.o B.o ..." --coord "C.o ..." \
#            --rpc librpc.a --api "ferry.h ..." [--print]
# Exits 1 and names the call when a data-plane object uses a symbol that the
# coordinator client or the rpc layer defines, or when a coordinator-client
# object uses a data-plane symbol that is neither FERRY_API nor allowed;
# --print writes the graph.
set -eu

# The data plane's internal entries the coordinator client may call.
CLIENT_ALLOWED="ferry__fail ferry__clear_error ferry__fork_start ferry__op_cancel_why"

dataplane=
coord=
rpc=
api=
print=0
while [ $# -gt 0 ]; do
    case "$1" in
    --dataplane) dataplane=$2; shift 2 ;;
    --coord) coord=$2; shift 2 ;;
    --rpc) rpc=$2; shift 2 ;;
    --api) api=$2; shift 2 ;;
    --print) print=1; shift ;;
    *) echo "worker-callgraph.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$dataplane" ] && [ -n "$coord" ] && [ -n "$rpc" ] && [ -n "$api" ] || {
    echo "usage: worker-callgraph.sh --dataplane OBJS --coord OBJS --rpc LIB --api HEADERS" \
        "[--print]" >&2
    exit 2
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# defs: "symbol file layer" for every defined global symbol.
for layer in dataplane coord; do
    eval objs=\$$layer
    for o in $objs; do
        name=$(basename "$o" .o)
        nm -g --defined-only "$o" | awk -v f="$name" -v l="$layer" 'NF==3 {print $3, f, l}'
    done
done >"$tmp/defs"
nm -g --defined-only "$rpc" 2>/dev/null | awk 'NF==3 {print $3, "rpc", "rpc"}' >>"$tmp/defs"
sort -u -k1,1 "$tmp/defs" >"$tmp/defs.sorted"

# uses: "symbol file layer" for every undefined symbol.
for layer in dataplane coord; do
    eval objs=\$$layer
    for o in $objs; do
        name=$(basename "$o" .o)
        nm -u "$o" | awk -v f="$name" -v l="$layer" '{print $NF, f, l}'
    done
done | sort -k1,1 >"$tmp/uses"

# edges: "caller callee caller_layer callee_layer symbol"
join -1 1 -2 1 "$tmp/uses" "$tmp/defs.sorted" |
    awk '$2 != $4 {print $2, $4, $3, $5, $1}' | sort -u >"$tmp/edges"

if [ "$print" = 1 ]; then
    echo "libferry call graph (caller -> callee: symbols), from the objects:"
    awk '{k=$3 ":" $1 " -> " $4 ":" $2; s[k]=s[k] (s[k]==""?"":" ") $5}
         END {for (k in s) print k ": " s[k]}' "$tmp/edges" | sort
fi

up=$(awk '$3 == "dataplane" && $4 != "dataplane"' "$tmp/edges")
if [ -n "$up" ]; then
    echo "worker-callgraph.sh: the data plane calls up (caller callee symbol):" >&2
    echo "$up" | awk '{print "  " $1 " -> " $2 " (" $4 "): " $5}' >&2
    exit 1
fi

# allowed: the FERRY_API functions, then CLIENT_ALLOWED, one a line.
# shellcheck disable=SC2086 # --api is a list of headers
"$(dirname "$0")/ferry-api-symbols.sh" $api >"$tmp/allowed"
[ -s "$tmp/allowed" ] || {
    echo "worker-callgraph.sh: no FERRY_API function in --api $api" >&2
    exit 2
}
for s in $CLIENT_ALLOWED; do echo "$s"; done >>"$tmp/allowed"
inside=$(awk 'NR == FNR {ok[$1] = 1; next}
              $3 == "coord" && $4 == "dataplane" && !($5 in ok)' "$tmp/allowed" "$tmp/edges")
if [ -n "$inside" ]; then
    echo "worker-callgraph.sh: the coordinator client calls the data plane's internals" \
        "(caller callee symbol; declare a new entry in a narrow header and add it to" \
        "CLIENT_ALLOWED, or use the public API):" >&2
    echo "$inside" | awk '{print "  " $1 " -> " $2 ": " $5}' >&2
    exit 1
fi
echo "worker-callgraph.sh: no call from the data plane up into the coordinator client or rpc," \
    "and the client calls the data plane through its API and $(echo "$CLIENT_ALLOWED" | wc -w)" \
    "allowed entries only"
