#!/usr/bin/env bash
# bench/control.sh [BUILD_DIR] [--quick]: the control-path benchmark.
#
# Starts a private etcd and one ferry-coordinator on free loopback ports,
# and an echo server (the same rpc/ layer, an empty handler), registers 1000
# records, then from a separate load process (ferry_bench_control) measures,
# at 1, 8 and 64 concurrent clients:
#   a bare echo through rpc/         the reference for every RPC figure
#   Lookup through the coordinator   vs  the same records read from etcd, through
#                                        its JSON gateway and its native gRPC
#                                        KV.Range (C: gRPC core + protobuf-c)
#   Register through the coordinator vs  etcd create-if-absent txn through the
#                                        JSON gateway and through gRPC (the
#                                        coordinator's way), and lease grant +
#                                        txn (what a Register without a session
#                                        lease asks); these four alternate,
#                                        BENCH_REGISTER_ROUNDS times (3), with
#                                        Register on a replica that runs each
#                                        Register in its own transaction
#                                        (--register-batch 1, own prefix)
# then Register on a replica with --etcd-inflight 16 (the default before
# Registers shared transactions; now 64: a batch holds at most that many
# Registers) and on one with
# --etcd-kv-api gateway (key-values over the JSON gateway, as before
# issue #14's change), then starts a second default
# replica on the same etcd and repeats Lookup and Register with the clients
# split over both. Each run is bounded by time
# (5 s; 1 s with --quick) and by count (200000 calls per client). Each
# echo, Lookup and Register run also reports its servers' CPU time per call
# (--server-pid: the echo server's, or the coordinators'), the figure that a
# p99 at 8 clients on two busy cores follows.
# Appends one JSON object per run to $BENCH_OUT (default
# bench/results/control-<time>.jsonl) and prints the table.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
bench_args control "$@"
SECONDS_PER_RUN=5
[ "$QUICK" = 1 ] && SECONDS_PER_RUN=1
REGISTER_ROUNDS=${BENCH_REGISTER_ROUNDS:-3}
[ "$QUICK" = 1 ] && REGISTER_ROUNDS=1
LOAD="$BUILD_DIR/bench/ferry_bench_control"
[ -x "$LOAD" ] || bench_die "$LOAD not built (make bench, or cmake --build $BUILD_DIR)"
CLIENTS=${BENCH_CLIENTS:-1 8 64}
RUN=$(date +%s)

bench_machine_json | sed 's/^{/{"bench":"machine",/' >>"$BENCH_OUT"
echo >>"$BENCH_OUT"

load() {
    "$LOAD" --seconds "$SECONDS_PER_RUN" --max-ops 200000 --warmup-ops 20 --records 1000 \
        --ids "bench-rec-$RUN" "$@" | tee -a "$BENCH_OUT"
}

bench_start_etcd
bench_start_echo
COORD_TARGETS=""
COORD_PIDS=""
bench_start_coord bench-a
ONE=$COORD_TARGETS
ONE_PID=$COORD_PIDS
echo "etcd $ETCD_ENDPOINT, coordinator $ONE, echo $ECHO_TARGET; $SECONDS_PER_RUN s per run" >&2
"$LOAD" --mode populate --coord "$ONE" --clients 8 --records 1000 --ids "bench-rec-$RUN"

for n in $CLIENTS; do
    load --mode echo --coord "$ECHO_TARGET" --clients "$n" --channels thread --server-pid "$ECHO_PID"
    load --mode lookup --coord "$ONE" --clients "$n" --channels thread --server-pid "$ONE_PID"
    load --mode etcd-get --etcd "$ETCD_ENDPOINT" --clients "$n"
    load --mode etcd-grpc-get --etcd "$ETCD_ENDPOINT" --clients "$n"
    load --mode echo --coord "$ECHO_TARGET" --clients "$n" --channels shared --server-pid "$ECHO_PID"
    load --mode lookup --coord "$ONE" --clients "$n" --channels shared --server-pid "$ONE_PID"
done
# Register against its references, alternating, REGISTER_ROUNDS times: etcd's
# write latency here moves 2-3x within minutes (its fsync), so one run of
# each says little; report.py takes the median of each round's ratio.
# A replica that gives every Register its own etcd transaction, on its own
# prefix (so neither replica's watch decodes the other's writes).
COORD_TARGETS=""
COORD_PIDS=""
FERRY_BENCH_COORD_ARGS="${FERRY_BENCH_COORD_ARGS:-} --register-batch 1 --prefix /ferry-b1/" \
    bench_start_coord bench-b1
ALONE=$COORD_TARGETS
ALONE_PID=$COORD_PIDS
for n in $CLIENTS; do
    for r in $(seq "$REGISTER_ROUNDS"); do
        load --mode register --coord "$ONE" --clients "$n" --run-id "reg1-$RUN-$n-$r" \
            --server-pid "$ONE_PID"
        load --mode register --coord "$ALONE" --clients "$n" --run-id "regb-$RUN-$n-$r" \
            --server-pid "$ALONE_PID" \
            --label "batch1"
        load --mode etcd-txn --etcd "$ETCD_ENDPOINT" --clients "$n" --run-id "txn-$RUN-$n-$r"
        load --mode etcd-txn --etcd "$ETCD_ENDPOINT" --clients "$n" --run-id "gtxn-$RUN-$n-$r" \
            --etcd-kv-api grpc --label grpc
        load --mode etcd-lease-txn --etcd "$ETCD_ENDPOINT" --clients "$n" \
            --run-id "ltxn-$RUN-$n-$r"
    done
done
bench_stop_last

# Register with 16 etcd workers (the default before batching; now 64), on a
# replica of its own: a batch then holds at most 16 Registers.
COORD_TARGETS=""
COORD_PIDS=""
FERRY_BENCH_COORD_ARGS="${FERRY_BENCH_COORD_ARGS:-} --etcd-inflight 16" bench_start_coord bench-i16
for n in $CLIENTS; do
    load --mode register --coord "$COORD_TARGETS" --clients "$n" --run-id "regi-$RUN-$n" \
        --server-pid "$COORD_PIDS" \
        --label "inflight16"
done
bench_stop_last

# Register on a replica whose key-values go over etcd's JSON gateway.
COORD_TARGETS=""
COORD_PIDS=""
FERRY_BENCH_COORD_ARGS="${FERRY_BENCH_COORD_ARGS:-} --etcd-kv-api gateway" \
    bench_start_coord bench-gw
for n in $CLIENTS; do
    load --mode register --coord "$COORD_TARGETS" --clients "$n" --run-id "regg-$RUN-$n" \
        --server-pid "$COORD_PIDS" \
        --label "kv-gateway"
done
bench_stop_last

# Scaling: a second replica over the same etcd; clients alternate replicas.
COORD_TARGETS=$ONE
COORD_PIDS=$ONE_PID
bench_start_coord bench-b
echo "second replica; targets $COORD_TARGETS" >&2
for n in $CLIENTS; do
    load --mode lookup --coord "$COORD_TARGETS" --clients "$n" --channels thread \
        --server-pid "$COORD_PIDS"
    load --mode register --coord "$COORD_TARGETS" --clients "$n" --run-id "reg2-$RUN-$n" \
        --server-pid "$COORD_PIDS"
done

echo "results: $BENCH_OUT" >&2
/usr/bin/python3 "$HERE/report.py" --plain "$BENCH_OUT"
