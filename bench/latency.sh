#!/usr/bin/env bash
# bench/latency.sh [BUILD_DIR] [--quick]: the small-operation benchmark.
#
# Starts a private etcd and one coordinator on loopback, then times 2000
# (200 with --quick) 4 KiB writes through them by libferry's coordinator API
# (receiver: ferry_writable_create + ferry_op_publish; sender:
# ferry_write_begin_by_id + ferry_op_wait), phase by phase (prep, register,
# hand-off, claim, transfer, completion seen by the receiver, the
# whole cycle, the cycle without the register, teardown), with libferry's
# progress thread and the default spin (50 us), with caller-driven progress,
# and with the progress thread and no spin, then once more with the first
# configuration traced: the sender's steps from its debug lines, where the
# transfer's time goes (BENCH_LATENCY_CONFIGS overrides:
# "PROGRESS:SPIN_US[:trace] ..."). Each run also gives the CPU time per
# cycle of etcd, the coordinator, the receiver and the sender (from /proc).
# Appends JSON lines to $BENCH_OUT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
bench_args latency "$@"
ITERS=2000
[ "$QUICK" = 1 ] && ITERS=200
export FERRY_LOG_LEVEL=${FERRY_LOG_LEVEL:-warn}

bench_machine_json | sed 's/^{/{"bench":"machine",/' >>"$BENCH_OUT"
echo >>"$BENCH_OUT"
bench_start_etcd
ETCD_PID=${BENCH_PIDS[-1]}
COORD_TARGETS=""
bench_start_coord bench-a
for config in ${BENCH_LATENCY_CONFIGS:-thread:50 caller:50 thread:0 thread:50:trace}; do
    IFS=: read -r progress spin traced <<<"$config"
    "$BUILD_DIR/bench/ferry_bench_data" --latency --coord "$COORD_TARGETS" --size 4KiB \
        --iters "$ITERS" --warmup 20 --progress "$progress" --spin-us "$spin" \
        ${traced:+--trace} --cpu-pid "etcd=$ETCD_PID" --cpu-pid "coordinator=$COORD_PIDS" |
        tee -a "$BENCH_OUT"
done
echo "results: $BENCH_OUT" >&2
/usr/bin/python3 "$HERE/report.py" --plain "$BENCH_OUT"
