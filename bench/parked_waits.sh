#!/usr/bin/env bash
# bench/parked_waits.sh [BUILD_DIR] [--quick]: what parked waits cost the
# rest of a replica. Two ferry-coordinator replicas on one private etcd, each
# with its own prefix (so neither sees the other's changes): on one, PARKED
# Lookups (default 10000) wait (wait_ms) for IDs nobody registers; the other
# has none, the reference. Register at 8 closed-loop clients then alternates
# between them (3 rounds, 6 s each; 1 round of 2 s with --quick), and each
# round prints Register/s and the coordinator's CPU per Register (utime +
# stime from /proc/<pid>/stat) beside the reference's, as ratios. Every
# change of an operation wakes the waits parked on its request ID: a replica
# that walked all of them on every change paid for each one on every
# Register (bench/NOTES.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
bench_args parked-waits "$@"
PARKED=${PARKED:-10000}
ROUNDS=3
SECONDS_PER_RUN=6
[ "$QUICK" = 1 ] && ROUNDS=1 && SECONDS_PER_RUN=2
LOAD="$BUILD_DIR/bench/ferry_bench_control"
[ -x "$LOAD" ] || bench_die "$LOAD not built (make bench, or cmake --build $BUILD_DIR)"

bench_start_etcd
bench_tmp
declare -A PID TARGET
for r in parked none; do
    mkdir -p "$BENCH_TMP/$r"
    extra=()
    [ "$r" = parked ] && extra=(--metrics-listen "127.0.0.1:$(bench_free_port)"
        --max-waits "$((PARKED + 1000))")
    "$BUILD_DIR/coordinator/ferry-coordinator" --listen 127.0.0.1:0 \
        --port-file "$BENCH_TMP/$r/port" --name "$r" --prefix "/pw-$r/" --etcd "$ETCD_ENDPOINT" \
        "${extra[@]}" >"$BENCH_TMP/$r/coordinator.log" 2>&1 &
    BENCH_PIDS+=($!)
    PID[$r]=$!
    bench_wait_for "test -s $BENCH_TMP/$r/port" 150 || bench_die "replica $r did not start"
    TARGET[$r]="127.0.0.1:$(cat "$BENCH_TMP/$r/port")"
    [ "$r" = parked ] && METRICS=${extra[1]}
done

# The parked Lookups: one Python process holds them open (grpcio, many
# connections: a connection carries at most 1024 calls) until its stdin
# closes, and says when the replica's ferry_parked_waits gauge shows them all.
mkfifo "$BENCH_TMP/hold"
FERRY_SOURCE_DIR=$(cd "$HERE/.." && pwd) /usr/bin/python3 - "${TARGET[parked]}" "$PARKED" \
    "$METRICS" "$BENCH_TMP/ready" "$BENCH_TMP/gen" <"$BENCH_TMP/hold" <<'PY' &
import os, sys, time, urllib.request
sys.path.insert(0, os.path.join(os.environ["FERRY_SOURCE_DIR"], "tests", "python"))
import ferry_harness
target, n, metrics, ready, gen = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ferry_harness.generate_stubs(gen)
import grpc
from ferry.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as rpc
stubs = [rpc.CoordinatorStub(grpc.insecure_channel(
    target, options=[("grpc.use_local_subchannel_pool", 1)])) for _ in range(n // 900 + 1)]
calls = [stubs[i % len(stubs)].Lookup.future(pb.LookupRequest(
    request_id=f"never-{i}", access_token="t" * 16, wait_ms=3600000), timeout=3600)
    for i in range(n)]
def parked():
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    return next((float(l.split()[1]) for l in text.splitlines()
                 if l.startswith("ferry_parked_waits ")), -1)
until = time.time() + 300
while parked() < n and time.time() < until:
    time.sleep(0.2)
if parked() < n:
    sys.exit(f"only {parked():.0f} of {n} Lookups parked")
open(ready, "w").write("ok")
sys.stdin.read()
PY
BENCH_PIDS+=($!)
exec 9>"$BENCH_TMP/hold"
bench_wait_for "test -s $BENCH_TMP/ready" 3000 || bench_die "the Lookups did not park"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# register REPLICA ROUND: Register/s and coordinator CPU us per Register.
register() {
    local c0 c1 out ops
    c0=$(ticks "${PID[$1]}")
    out=$("$LOAD" --mode register --coord "${TARGET[$1]}" --clients 8 \
        --seconds "$SECONDS_PER_RUN" --max-ops 200000 --warmup-ops 20 --records 1000 \
        --ids "pw-$1-$2" --run-id "parked-waits-$1-$2" | tail -1)
    c1=$(ticks "${PID[$1]}")
    echo "$out" >>"$BENCH_OUT"
    ops=$(echo "$out" | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["ops"])')
    echo "$((ops / SECONDS_PER_RUN)) $(((c1 - c0) * 1000000 / $(getconf CLK_TCK) / ops))"
}

echo "Register at 8 clients, $PARKED Lookups parked on one replica against none on the other:"
for round in $(seq "$ROUNDS"); do
    read -r p_ops p_cpu < <(register parked "$round")
    read -r n_ops n_cpu < <(register none "$round")
    /usr/bin/python3 -c 'import sys; p, pc, n, nc = map(int, sys.argv[1:5]); print(
        f"  round {sys.argv[5]}: {p:,}/s against {n:,}/s ({p / n:.2f}); CPU per Register "
        f"{pc} us against {nc} us ({pc / nc:.2f})")' "$p_ops" "$p_cpu" "$n_ops" "$n_cpu" "$round"
done
exec 9>&-
