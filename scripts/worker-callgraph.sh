#!/bin/sh
# worker-callgraph.sh: who calls whom across the files of libferry, read from
# the compiled objects (a file "calls" another when it has an undefined
# symbol the other defines), and the layering check of STYLE.md 13: the data
# plane (UCX only) never calls up into the coordinator client, nor into the
# rpc layer (gRPC).
#
# usage: worker-callgraph.sh --dataplane "A.o B.o ..." --coord "C.o ..." \
#            --rpc librpc.a [--print]
# Exits 1 and names the call when a data-plane object uses a symbol that the
# coordinator client or the rpc layer defines; --print writes the graph.
set -eu

dataplane=
coord=
rpc=
print=0
while [ $# -gt 0 ]; do
    case "$1" in
    --dataplane) dataplane=$2; shift 2 ;;
    --coord) coord=$2; shift 2 ;;
    --rpc) rpc=$2; shift 2 ;;
    --print) print=1; shift ;;
    *) echo "worker-callgraph.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$dataplane" ] && [ -n "$coord" ] && [ -n "$rpc" ] || {
    echo "usage: worker-callgraph.sh --dataplane OBJS --coord OBJS --rpc LIB [--print]" >&2
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
echo "worker-callgraph.sh: no call from the data plane up into the coordinator client or rpc"
