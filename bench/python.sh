#!/usr/bin/env bash
# bench/python.sh [BUILD_DIR] [--quick]: the Python package (python/, issue
# #11) beside libferry's C API in the same run, as ratios.
#
#   - the 4 KiB small-operation cycle through a private etcd and
#     coordinator (receiver: create_writable + publish, hand-off over a pipe,
#     wait; sender: begin_write_by_id + wait): ferry_bench_python.py
#     --latency vs ferry_bench_data --latency, phase "cycle (create..receiver
#     wait)", p50; target Python/C <= 1.3;
#   - the 4 KiB operation alone (begin_write .. wait, metadata over a pipe);
#   - write bandwidth at 1 MiB .. 1 GiB (BENCH_SIZES), 1 descriptor:
#     ferry_bench_python.py --op write vs ferry_bench_data --op write;
#     target Python/C >= 0.97 (zero copy: the same UCX puts from the same
#     memory);
#   - the same writes on Ferry-allocated memory (issue #14: --mem alloc on
#     both, Connector.allocate vs ferry_mem_alloc), 1 MiB and up, same
#     target.
# C and Python alternate for BENCH_ROUNDS rounds (3; 1 with --quick); the
# table shows medians. The package is imported from BUILD_DIR/python.
# Appends JSON lines to $BENCH_OUT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
bench_args python "$@"
PY=${FERRY_PYTHON:-/usr/bin/python3}
DATA="$BUILD_DIR/bench/ferry_bench_data"
[ -x "$DATA" ] || bench_die "$DATA not built"
[ -f "$BUILD_DIR/python/ferry/_ferry.abi3.so" ] || bench_die "the Python module is not built"
export PYTHONPATH="$BUILD_DIR/python"
export FERRY_LOG_LEVEL=${FERRY_LOG_LEVEL:-warn}
ROUNDS=${BENCH_ROUNDS:-3}
LAT_ITERS=2000
SIZES=${BENCH_SIZES:-1MiB 16MiB 256MiB 1GiB}
[ "$QUICK" = 1 ] && { ROUNDS=1; LAT_ITERS=300; }

bytes() { case $1 in *GiB) echo $((${1%GiB} << 30)) ;; *MiB) echo $((${1%MiB} << 20)) ;;
    *KiB) echo $((${1%KiB} << 10)) ;; *) echo "$1" ;; esac; }
iters() {
    local n=$(( (1 << 30) / $(bytes "$1") ))
    [ "$n" -gt 2000 ] && n=2000
    [ "$n" -lt 3 ] && n=3
    [ "$QUICK" = 1 ] && n=$(( n / 5 > 2 ? n / 5 : 2 ))
    echo "$n"
}

RUN_OUT=$(mktemp)
trap 'rm -f "$RUN_OUT"; bench_cleanup' EXIT
bench_machine_json | sed 's/^{/{"bench":"machine",/' >>"$BENCH_OUT"
echo >>"$BENCH_OUT"
bench_start_etcd
COORD_TARGETS=""
bench_start_coord bench-py

for round in $(seq "$ROUNDS"); do
    "$DATA" --latency --coord "$COORD_TARGETS" --size 4KiB --iters "$LAT_ITERS" --warmup 20 |
        grep '"cycle (create..receiver wait)"' | sed 's/^{/{"impl":"c",/' | tee -a "$RUN_OUT"
    "$PY" "$HERE/ferry_bench_python.py" --latency --coord "$COORD_TARGETS" --size 4KiB \
        --iters "$LAT_ITERS" --warmup 20 | tee -a "$RUN_OUT"
    for size in 4KiB $SIZES; do
        n=$(iters "$size")
        "$DATA" --op write --size "$size" --iters "$n" | sed 's/^{/{"impl_c":1,/' | tee -a "$RUN_OUT"
        "$PY" "$HERE/ferry_bench_python.py" --op write --size "$size" --iters "$n" |
            tee -a "$RUN_OUT"
    done
    for size in $SIZES; do
        n=$(iters "$size")
        "$DATA" --op write --mem alloc --size "$size" --iters "$n" |
            sed 's/^{/{"impl_c":1,/' | tee -a "$RUN_OUT"
        "$PY" "$HERE/ferry_bench_python.py" --op write --mem alloc --size "$size" \
            --iters "$n" | tee -a "$RUN_OUT"
    done
done >&2
cat "$RUN_OUT" >>"$BENCH_OUT"

"$PY" - "$RUN_OUT" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def impl(r):
    return "python" if r.get("impl") == "python" else "c"
def mem(r):
    if impl(r) == "python":
        return r.get("mem", "user")
    return {"ferry": "user", "ferry-region": "region", "ferry-alloc": "alloc"}[r["impl"]]
lat = {"c": [], "python": []}
data = {}
for r in rows:
    if r["bench"] == "latency":
        lat[impl(r)].append(r["p50_us"])
    elif r["bench"] == "data":
        data.setdefault((mem(r), r["size"]), {"c": [], "python": []})[impl(r)].append(r)
print("Python package vs C, same run (medians)")
c, p = statistics.median(lat["c"]), statistics.median(lat["python"])
print(f"  4 KiB cycle via coordinator p50: C {c:.1f} us, Python {p:.1f} us, "
      f"Python/C {p / c:.2f} (target <= 1.3)")
for key in sorted(data, key=lambda k: (k[0] != "user", k[1])):
    where, size = key
    d = data[key]
    what = "write" if where == "user" else "write, allocated memory"
    cu = statistics.median(r["us_per_op"] for r in d["c"])
    pu = statistics.median(r["us_per_op"] for r in d["python"])
    cg = statistics.median(r["gbps"] for r in d["c"])
    pg = statistics.median(r["gbps"] for r in d["python"])
    if size < (1 << 20):
        print(f"  {size:>10} B {what}: C {cu:.1f} us/op, Python {pu:.1f} us/op, "
              f"Python/C time {pu / cu:.2f}")
    else:
        print(f"  {size:>10} B {what}: C {cg:.2f} GB/s, Python {pg:.2f} GB/s, "
              f"Python/C bandwidth {pg / cg:.2f} (target >= 0.97)")
PYEOF
echo "results: $BENCH_OUT" >&2
