#!/usr/bin/env bash
# bench/data.sh [BUILD_DIR] [--quick]: the data-path benchmark.
#
# For each size (4 KiB .. 1 GiB), op (write/read) and descriptor count (1,
# 16), runs Ferry (ferry_bench_data: two processes, metadata over a pipe)
# and two references, alternating, for ROUNDS rounds (5; 1 with --quick);
# the table shows the median:
#   - ferry_bench_ucxput --mem user: raw ucp_put_nbx/ucp_get_nbx + flush,
#     one at a time, between two processes, into memory the program
#     allocated and ucp_mem_map'ed, as Ferry does (like-for-like), and
#     --mem ucx, the same into UCX-allocated memory (what ucx_perftest uses);
#   - ucx_perftest -t ucp_put_bw / ucp_get (UCX 1.13's name) on loopback.
#     It has no option to put into user memory (-m takes memory types, host
#     only here; -z only passes the memory handle), so it measures UCX's
#     direct shared-memory path, which UCX 1.13 does not offer for user
#     memory (emulated over active messages there): not like-for-like.
# Ferry runs three times per round: on memory every operation registers
# itself (impl "ferry", as before), on the same kind of memory registered
# once (ferry_mem_register, "ferry-region", compared with the raw put into
# user memory) and on Ferry-allocated memory (ferry_mem_alloc,
# "ferry-alloc", compared with ucx_perftest, whose memory UCX allocates the
# same way): issue #14. At 1 and 16 MiB Ferry-allocated memory also runs
# as a stream of 4 operations in flight (--window 4), as ucx_perftest
# streams its puts.
# Then 1, 2 and 4 concurrent pairs of Ferry and ucx_perftest at 1 MiB and
# 64 MiB, operation creation on a registered 1 GiB region
# (ferry_bench_data --create), where a 1 MiB operation's time goes
# (--trace), and memcpy of one core.
# UCX_TLS is whatever the caller's environment says (unset: UCX's default,
# for both sides alike). Appends JSON lines to $BENCH_OUT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
bench_args data "$@"
DATA="$BUILD_DIR/bench/ferry_bench_data"
RAW="$BUILD_DIR/bench/ferry_bench_ucxput"
[ -x "$DATA" ] || bench_die "$DATA not built"
[ -x "$RAW" ] || bench_die "$RAW not built"
command -v ucx_perftest >/dev/null || bench_die "ucx_perftest missing (apt-get install ucx-utils)"
export FERRY_LOG_LEVEL=${FERRY_LOG_LEVEL:-warn}
ROUNDS=${BENCH_ROUNDS:-5}
SIZES=${BENCH_SIZES:-4KiB 64KiB 1MiB 16MiB 256MiB 1GiB}
[ "$QUICK" = 1 ] && ROUNDS=1

bench_machine_json | sed "s/^{/{\"bench\":\"machine\",\"ucx_tls\":\"${UCX_TLS:-default}\",/" >>"$BENCH_OUT"
echo >>"$BENCH_OUT"

bytes() { case $1 in *GiB) echo $((${1%GiB} << 30)) ;; *MiB) echo $((${1%MiB} << 20)) ;;
    *KiB) echo $((${1%KiB} << 10)) ;; *) echo "$1" ;; esac; }

# Iterations per size: about a quarter of a second of transfer each.
iters() {
    local b; b=$(bytes "$1")
    local n=$(( (1 << 30) / b ))
    [ "$n" -gt 2000 ] && n=2000
    [ "$n" -lt 3 ] && n=3
    [ "$QUICK" = 1 ] && n=$(( n / 5 > 2 ? n / 5 : 2 ))
    echo "$n"
}

# perftest OP SIZE ITERS PAIRS: prints one JSON line.
perftest() {
    local op=$1 size=$2 n=$3 pairs=$4 b test ports=() pids=() outs=() i total=0
    b=$(bytes "$size")
    # UCX 1.13 names the get bandwidth test "ucp_get" (later releases: ucp_get_bw).
    test=ucp_put_bw; [ "$op" = read ] && test=ucp_get
    for i in $(seq "$pairs"); do
        ports+=("$(bench_free_port)")
        timeout 300 ucx_perftest -p "${ports[-1]}" >/dev/null 2>&1 &
        pids+=($!)
    done
    sleep 0.3 # servers have no readiness signal; the client retries nothing
    for i in $(seq 0 $((pairs - 1))); do
        outs+=("$(mktemp)")
        timeout 300 ucx_perftest 127.0.0.1 -p "${ports[$i]}" -t "$test" -s "$b" -n "$n" -w 2 \
            >"${outs[$i]}" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || true; done
    for i in "${outs[@]}"; do
        # Final: iters p50 avg overall bw_avg bw_overall ... (MB/s = MiB/s)
        local mbs; mbs=$(awk '/^Final:/ {print $7}' "$i")
        [ -n "$mbs" ] || { cat "$i" >&2; mbs=0; }
        total=$(awk -v t="$total" -v m="$mbs" 'BEGIN {print t + m}')
        rm -f "$i"
    done
    printf '{"bench":"data","impl":"ucx_perftest","op":"%s","size":%s,"descs":1,"pairs":%s,"iters":%s,"gbps":%.3f}\n' \
        "$op" "$b" "$pairs" "$n" "$(awk -v m="$total" 'BEGIN {print m * 1048576 / 1e9}')"
}

rawput() {
    local op=$1 size=$2 n=$3 mem=$4
    timeout 300 "$RAW" --op "$op" --size "$size" --iters "$n" --warmup 2 --mem "$mem" ||
        echo "bench: ferry_bench_ucxput $op $size --mem $mem failed" >&2
}

# ferry OP SIZE DESCS ITERS PAIRS [ARGS...] (ARGS: --mem region|alloc, --trace)
ferry() {
    local op=$1 size=$2 descs=$3 n=$4 pairs=$5
    shift 5
    "$DATA" --op "$op" --size "$size" --descs "$descs" --iters "$n" --warmup 2 --pairs "$pairs" \
        "$@" ${BENCH_FERRY_ARGS:-}
}

echo "UCX_TLS=${UCX_TLS:-default}; $ROUNDS rounds; results $BENCH_OUT" >&2
for size in $SIZES; do
    n=$(iters "$size")
    for op in write read; do
        for r in $(seq "$ROUNDS"); do
            ferry "$op" "$size" 1 "$n" 1 | tee -a "$BENCH_OUT"
            ferry "$op" "$size" 1 "$n" 1 --mem region | tee -a "$BENCH_OUT"
            rawput "$op" "$size" "$n" user | tee -a "$BENCH_OUT"
            ferry "$op" "$size" 1 "$n" 1 --mem alloc | tee -a "$BENCH_OUT"
            perftest "$op" "$size" "$n" 1 | tee -a "$BENCH_OUT"
            if [ "$(bytes "$size")" -ge $((1 << 20)) ] && [ "$(bytes "$size")" -le $((16 << 20)) ]; then
                ferry "$op" "$size" 1 "$n" 1 --mem alloc --window 4 | tee -a "$BENCH_OUT"
            fi
            rawput "$op" "$size" "$n" ucx | tee -a "$BENCH_OUT"
            ferry "$op" "$size" 16 "$n" 1 | tee -a "$BENCH_OUT"
        done
    done
done
for pairs in ${BENCH_PAIRS:-1 2 4}; do
    for size in 1MiB 64MiB; do
        n=$(iters "$size")
        for r in $(seq "$ROUNDS"); do
            ferry write "$size" 1 "$n" "$pairs" | tee -a "$BENCH_OUT"
            perftest write "$size" "$n" "$pairs" | tee -a "$BENCH_OUT"
        done
    done
done
for r in $(seq "$ROUNDS"); do
    "$DATA" --create --size 1GiB --iters "$([ "$QUICK" = 1 ] && echo 400 || echo 2000)" |
        tee -a "$BENCH_OUT"
done
for mem in user region alloc; do
    for op in write read; do
        ferry "$op" 1MiB 1 "$(iters 1MiB)" 1 --mem "$mem" --trace | tee -a "$BENCH_OUT"
    done
done
for size in 1MiB 256MiB 1GiB; do
    "$DATA" --memcpy --size "$size" --iters "$(( $(iters "$size") * 4 ))" | tee -a "$BENCH_OUT"
done
echo "results: $BENCH_OUT" >&2
/usr/bin/python3 "$HERE/report.py" --plain "$BENCH_OUT"
