#!/usr/bin/env bash
# bench/register_cpu.sh [BUILD_DIR] [-- COORDINATOR_FLAGS...]: CPU time per
# Register of the coordinator and of etcd, at 8 closed-loop clients for 6 s
# (after 2 s of warm-up), from utime + stime in /proc/<pid>/stat before and
# after. A private etcd and one ferry-coordinator (with the flags given) on
# free loopback ports. CPU per operation moves much less with the machine's
# load than throughput does, so it is how bench/NOTES.md compares two ways
# of doing the same thing (run them interleaved, several rounds each):
#   bench/register_cpu.sh build
#   bench/register_cpu.sh build -- --etcd-kv-api gateway
# FERRY_BENCH_COORD_BIN runs another coordinator binary (an older build).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ARGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    ARGS+=("$1")
    shift
done
[ $# -gt 0 ] && shift
# shellcheck source=lib.sh
. "$HERE/lib.sh"
bench_args register-cpu "${ARGS[@]}"
LOAD="$BUILD_DIR/bench/ferry_bench_control"
COORD_BIN=${FERRY_BENCH_COORD_BIN:-$BUILD_DIR/coordinator/ferry-coordinator}
[ -x "$LOAD" ] || bench_die "$LOAD not built (make bench, or cmake --build $BUILD_DIR)"

bench_start_etcd
ETCD_PID=${BENCH_PIDS[-1]}
bench_tmp
mkdir -p "$BENCH_TMP/cpu"
"$COORD_BIN" --listen 127.0.0.1:0 --port-file "$BENCH_TMP/cpu/port" --name cpu \
    --etcd "$ETCD_ENDPOINT" "$@" >"$BENCH_TMP/cpu/coordinator.log" 2>&1 &
COORD_PID=$!
BENCH_PIDS+=("$COORD_PID")
bench_wait_for "test -s $BENCH_TMP/cpu/port" 150 || bench_die "the coordinator did not start"
TARGET="127.0.0.1:$(cat "$BENCH_TMP/cpu/port")"
RUN=$(date +%s)

register() {
    "$LOAD" --mode register --coord "$TARGET" --clients 8 --seconds "$1" --max-ops 200000 \
        --warmup-ops 20 --records 1000 --ids "cpu-$2-$RUN" --run-id "cpu-$2-$RUN"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

register 2 warm >/dev/null
c0=$(ticks "$COORD_PID")
e0=$(ticks "$ETCD_PID")
out=$(register 6 measure)
c1=$(ticks "$COORD_PID")
e1=$(ticks "$ETCD_PID")
echo "$out" | tail -1 >>"$BENCH_OUT"
ops=$(echo "$out" | tail -1 | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["ops"])')
/usr/bin/python3 - "$ops" "$((c1 - c0))" "$((e1 - e0))" "$(getconf CLK_TCK)" "$*" <<'PY'
import sys
ops, coord, etcd, hz, flags = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"Register at 8 clients, 6 s{' (' + flags + ')' if flags else ''}: {ops / 6:,.0f}/s; CPU per "
      f"Register: coordinator {coord * 1e6 / hz / ops:,.0f} us, etcd {etcd * 1e6 / hz / ops:,.0f} us")
PY
