#!/usr/bin/env bash
# Ferry's GPU check: the one command to run on a GPU machine, from an
# unpacked bundle (make gpu-bundle; scripts/gpu-bundle.sh says what is in it).
#
#   ./run-gpu-checks.sh [REPORT_DIR]
#
# REPORT_DIR defaults to $OUT, else ./gpu-report. Writes REPORT_DIR/report.txt
# (plain text: the machine, UCX's transports, every C test's result, the
# reference bandwidths) and REPORT_DIR/logs/ (each step's full output).
# Runs, in this order and within FERRY_GPU_BUDGET_S (default 270) seconds:
#   1. ucx_info -v / -d: which transports load (cuda_copy, cuda_ipc expected)
#   2. every C test of the suite (tests.tsv), several at a time; tests that
#      need a GPU skip themselves where there is none
#      (exit 77: SKIP, with the test's reason); test_worker_cuda is the GPU
#      one (host<->GPU, GPU->GPU between two processes, direct and staged)
#   2b. the Python package's CUDA tests (python/tests/test_api.py -k cuda:
#      torch CUDA tensors written into and from, one produced on a side
#      stream), with the machine's Python and PyTorch and its pytest, else
#      the bundle's
#   3. where nvidia-smi works: ferry_bench_gpu (Ferry GPU->GPU writes between
#      two processes, 1 MiB .. 1 GiB, on the default path beside a
#      device-to-device copy of the same size, and forced onto the staged
#      path beside the slower host<->device copy, and staged reads the same
#      way (--reads); ratios; the staged rows again with --staged-puts, the
#      active side going through its own slots and UCX puts or gets), then
#      ferry_cuda_memcpy_bw (cudaMemcpy d2d, h2d, d2h) and ucx_perftest
#      ucp_put_bw with -m cuda between two processes on GPU 0 (the raw UCX
#      GPU->GPU reference, with UCX_PROTO_ENABLE=y: UCX 1.13's default
#      protocols crash on it), each while the time budget lasts
# Exit status: 0 when every test passed (or skipped) and ferry_bench_gpu
# (where run) moved every size, 1 otherwise; where nvidia-smi lists a GPU,
# test_worker_cuda or test_worker_cuda_direct skipping is a failure too, and
# so is a Python CUDA test skipping where torch sees the GPU.
set -uo pipefail

B=$(cd "$(dirname "$0")" && pwd)
R=${1:-${OUT:-$PWD/gpu-report}}
mkdir -p "$R/logs"
R=$(cd "$R" && pwd)
REPORT=$R/report.txt
BUDGET=${FERRY_GPU_BUDGET_S:-270}
START=$(date +%s)
: >"$REPORT"

say() { echo "$*" | tee -a "$REPORT"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

export LD_LIBRARY_PATH="$B/ucx/lib:$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$B/ucx/bin:$B/bin:$PATH"
export FERRY_BUILD_DIR=$B/build FERRY_SOURCE_DIR=$B/src FERRY_ETCD_BIN=$B/bin/etcd
export TMPDIR=${TMPDIR:-/tmp}

# --- The machine ---------------------------------------------------------------
say "Ferry GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
sed -n '1,6p' "$B/BUNDLE.txt" | sed 's/^/bundle: /' | tee -a "$REPORT"
say "host: $(uname -srm), $(nproc) CPUs, $(ldd --version 2>/dev/null | head -n 1)"
# The bundle carries no glibc: the machine's must be at least the one it was
# built against (BUNDLE.txt), or every program fails to start.
need=$(sed -n 's/^needs glibc >= //p' "$B/BUNDLE.txt")
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [ -n "$need" ] && [ -n "$have" ] &&
    [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" != "$need" ]; then
    say "WARNING: this glibc is $have, the bundle needs >= $need: its programs will not start"
fi
gpu=0
if nvidia-smi -L >"$R/logs/nvidia-smi.txt" 2>&1; then
    gpu=1
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
        --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$REPORT"
    nvidia-smi topo -m >>"$R/logs/nvidia-smi.txt" 2>&1
else
    say "gpu: none (nvidia-smi: $(head -n 1 "$R/logs/nvidia-smi.txt"))"
fi

# --- 1. UCX -------------------------------------------------------------------
ucx_info -v >"$R/logs/ucx_info-v.txt" 2>&1
ucx_info -d >"$R/logs/ucx_info-d.txt" 2>&1
say "ucx: $(sed -n 's/^# Version //p' "$R/logs/ucx_info-v.txt")," \
    "transports: $(awk '/Transport:/ {print $3}' "$R/logs/ucx_info-d.txt" | sort -u | tr '\n' ' ')"
for tl in cuda_copy cuda_ipc; do
    grep -q "Transport: $tl" "$R/logs/ucx_info-d.txt" ||
        say "ucx: $tl not listed (no GPU or driver, or the module did not load: logs/ucx_info-d.txt)"
done

# --- 2. The C tests -----------------------------------------------------------
say ""
say "tests (name, seconds, result):"
JOBS=${FERRY_GPU_JOBS:-$(($(nproc) > 16 ? 8 : ($(nproc) + 1) / 2))}
run_test() { # name rel timeout env args
    local name=$1 rel=$2 timeout=$3 env=$4 args=$5 t0 rc lim
    lim=$(left)
    [ "$lim" -gt 5 ] || { printf '%s\tNOT RUN (time budget)\t0\n' "$name"; return; }
    [ "$timeout" -lt "$lim" ] || timeout=$lim
    t0=$(date +%s)
    (
        cd "$(dirname "$B/build/$rel")" || exit 1
        [ "$env" = - ] && env=
        [ "$args" = - ] && args=
        set -f # env and args are words, never file patterns (FERRY_TEST_SKIP=*staged*)
        # shellcheck disable=SC2086 # env (KEY=VAL) and args are plain words
        exec timeout -k 5 "$timeout" env $env "$B/build/$rel" $args
    ) >"$R/logs/test-$name.txt" 2>&1
    rc=$?
    local res=PASS
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        res="FAIL (timeout ${timeout}s)"
    elif [ $rc -eq 77 ]; then
        # The test's own reason (CTest's SKIP_RETURN_CODE 77).
        res="SKIP ($(grep -m 1 '^SKIP' "$R/logs/test-$name.txt" | cut -c1-100))"
    elif [ $rc -ne 0 ]; then
        res="FAIL (exit $rc)"
    elif grep -qi 'skipped' "$R/logs/test-$name.txt"; then
        res="PASS (some skipped: $(grep -i -m 1 'skip' "$R/logs/test-$name.txt" | cut -c1-100))"
    fi
    printf '%s\t%s\t%s\n' "$name" "$res" $(($(date +%s) - t0))
}
export -f run_test left
export B R START BUDGET
grep -v '^#' "$B/tests.tsv" | awk -F'\t' '{print $1 "\t" $2 "\t" $3 "\t" $5 "\t" $6}' |
    xargs -d '\n' -P "$JOBS" -I{} bash -c 'IFS=$'"'"'\t'"'"' read -r n p t e a <<<"$1"; run_test "$n" "$p" "$t" "$e" "$a"' _ {} |
    sort >"$R/tests.txt"
awk -F'\t' '{printf "  %-40s %-8s %s\n", $1, $3, $2}' "$R/tests.txt" | tee -a "$REPORT"
total=$(wc -l <"$R/tests.txt")
failed=$(grep -c $'\tFAIL' "$R/tests.txt")
notrun=$(grep -c $'\tNOT RUN' "$R/tests.txt")
skipped=$(grep -c $'\tSKIP' "$R/tests.txt")
say "tests: $total, failed $failed, skipped $skipped, not run $notrun (logs/test-NAME.txt)"
# With a GPU listed, a CUDA test that skipped tested nothing: libferry could
# not use the GPU (a driver it could not load), or the direct path's UCX has
# no CUDA transports. That is a failed check, not a passed one.
gpuskip=0
if [ "$gpu" -eq 1 ] && grep -qE $'^test_worker_cuda(_direct)?\tSKIP' "$R/tests.txt"; then
    say "FAILED: a GPU is listed but a CUDA test skipped (its reason above): nothing was tested on it"
    gpuskip=1
fi

# --- 2b. The Python package's CUDA tests ------------------------------------------
# With the machine's Python and PyTorch. The bundle's libraries go first on
# the loader's path for the C programs; here only those the machine lacks
# (libgrpc, libprotobuf-c, ...): an older libstdc++ of the bundle's would
# keep the machine's torch from loading.
say ""
pyfail=0
pyld=$(mktemp -d "$TMPDIR/ferry-python-lib.XXXXXX") # links, kept out of the report
ldconfig -p 2>/dev/null | awk 'NR > 1 {print $1}' >"$R/logs/machine-sonames.txt"
for f in "$B"/lib/*; do
    so=$(basename "$f")
    grep -qxF "$so" "$R/logs/machine-sonames.txt" || ln -sf "$f" "$pyld/$so"
done
with_py() { LD_LIBRARY_PATH="$B/ucx/lib:$pyld" PYTHONPATH="$1" "${@:2}"; }
if [ ! -e "$B/build/python/ferry/__init__.py" ]; then
    say "python: not in this bundle (the build had no Python headers)"
elif ! python3 -c 'import importlib.util as u, sys
sys.exit(u.find_spec("torch") is None or u.find_spec("numpy") is None)' 2>/dev/null; then
    say "python: not run ($(python3 -V 2>&1) has no torch or numpy)"
elif ! with_py "$B/build/python" python3 -c 'import torch, numpy, ferry' \
    >"$R/logs/python-import.txt" 2>&1; then
    say "python: FAILED: torch, numpy or ferry did not import:" \
        "$(tail -n 1 "$R/logs/python-import.txt" | cut -c1-200)"
    pyfail=1
elif [ "$(left)" -le 20 ]; then
    say "python: not run (time budget)"
else
    pypath=$B/build/python
    python3 -c 'import pytest' 2>/dev/null || pypath=$pypath:$B/pylib
    torch_gpu=$(with_py "$pypath" python3 -c \
        'import torch; print(torch.__version__, int(torch.cuda.is_available()))' 2>/dev/null)
    lim=$(($(left) - 10))
    [ "$lim" -lt 60 ] || lim=60
    # The host-only test whose name says cuda (a connector option) is not
    # this step's.
    with_py "$pypath" timeout -k 5 "$lim" python3 -m pytest -q -rs -p no:cacheprovider \
        -k 'cuda and not claim_timeout' "$B/src/python/tests/test_api.py" \
        >"$R/logs/python-cuda.txt" 2>&1
    rc=$?
    say "python: $(python3 -V 2>&1), torch ${torch_gpu% *} (sees a GPU: ${torch_gpu##* })," \
        "pytest -k cuda: $(tail -n 1 "$R/logs/python-cuda.txt") (exit $rc; logs/python-cuda.txt)"
    grep '^SKIPPED' "$R/logs/python-cuda.txt" | cut -c1-160 | sed 's/^/  /' | tee -a "$REPORT"
    [ $rc -eq 0 ] || pyfail=1
    # Where torch sees the GPU, a CUDA tensor test that skipped (libferry
    # without CUDA) tested nothing.
    if [ "${torch_gpu##* }" = 1 ] && grep -q '^SKIPPED.*no CUDA' "$R/logs/python-cuda.txt"; then
        say "FAILED: torch sees a GPU but a Python CUDA test skipped: nothing was tested on it"
        pyfail=1
    fi
fi
rm -rf "$pyld"

# --- 3. Reference bandwidths ----------------------------------------------------
say ""
benchfail=0
if [ "$gpu" -eq 1 ]; then
    if [ "$(left)" -gt 40 ]; then
        say "Ferry on GPU 0: GPU->GPU writes between two processes beside the copies of the"
        say "same size (GB/s = 10^9 bytes/s; targets: direct >= 0.9 x d2d from 64 MiB, staged"
        say ">= 0.8 x the slower of h2d and d2h):"
        lim=$(($(left) - 20))
        [ "$lim" -lt 150 ] || lim=150
        timeout -k 5 "$lim" "$B/build/bench/ferry_bench_gpu" --device 0 --reads \
            >"$R/logs/ferry_bench_gpu.txt" 2>&1
        rc=$?
        sed 's/^/  /' "$R/logs/ferry_bench_gpu.txt" | tee -a "$REPORT"
        say "  (exit $rc$([ $rc -eq 124 ] && echo ': cut by the time budget, sizes above the last line not run'))"
        [ $rc -eq 0 ] || benchfail=1
    else
        say "ferry_bench_gpu: not run (time budget)"
    fi
    # The staged rows again with the writer putting from its own slots, as
    # between nodes, for the same run's comparison with copying straight
    # into the passive side's mapped slots (the default on one node).
    if [ "$(left)" -gt 60 ]; then
        say ""
        say "Ferry staged, the active side's own slots and UCX puts or gets (--staged-puts), same run:"
        timeout -k 5 45 "$B/build/bench/ferry_bench_gpu" --device 0 --staged-only --staged-puts \
            --reads --max-mib 256 >"$R/logs/ferry_bench_gpu_puts.txt" 2>&1
        rc=$?
        sed 's/^/  /' "$R/logs/ferry_bench_gpu_puts.txt" | tee -a "$REPORT"
        say "  (exit $rc)"
        [ $rc -eq 0 ] || [ $rc -eq 124 ] || benchfail=1
    fi
    say ""
    if [ "$(left)" -gt 60 ]; then
        say "cudaMemcpy on GPU 0 (GB/s = 10^9 bytes/s, each byte counted once):"
        timeout 90 ferry_cuda_memcpy_bw --device 0 >"$R/logs/cuda_memcpy_bw.txt" 2>&1
        say "  (exit $?)"
        sed 's/^/  /' "$R/logs/cuda_memcpy_bw.txt" | tee -a "$REPORT"
    fi
    say ""
    # UCX 1.13's default protocols have no RMA lane into another process's
    # CUDA memory: there ucx_perftest -m cuda dies of SIGSEGV (as Ferry's
    # direct path did: README, GPU). Its newer protocols complete, slowly.
    say "ucx_perftest ucp_put_bw -m cuda, two processes on GPU 0, GPU->GPU, UCX_PROTO_ENABLE=y (GB/s):"
    port=$((20000 + RANDOM % 20000))
    for mib in 1 4 16; do
        [ "$(left)" -gt 30 ] || { say "  $mib MiB: not run (time budget)"; continue; }
        size=$((mib << 20))
        iters=20
        log=$R/logs/ucx_perftest-$mib.txt
        port=$((port + 1))
        : >"$log"
        UCX_PROTO_ENABLE=y timeout 60 ucx_perftest -p "$port" -m cuda >"$log.server" 2>&1 &
        spid=$!
        # The server has no readiness signal: retry the client while the
        # connection is refused (each try's output kept).
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            UCX_PROTO_ENABLE=y timeout 60 ucx_perftest 127.0.0.1 -p "$port" -t ucp_put_bw -m cuda \
                -s "$size" -n "$iters" -w 2 >>"$log" 2>&1 && break
            grep -q 'Connection refused' "$log" || break
            sleep 0.5
        done
        kill "$spid" 2>/dev/null
        wait "$spid" 2>/dev/null
        mbs=$(awk '/^Final:/ {print $7}' "$log")
        if [ -n "$mbs" ]; then
            # ucx_perftest's MB/s is MiB/s.
            say "$(awk -v s="$size" -v m="$mbs" 'BEGIN {printf "  %12d  %8.2f", s, m * 1048576 / 1e9}')"
        else
            say "  $size: failed ($(tail -n 1 "$log"))"
        fi
    done
else
    say "reference bandwidths: skipped (no GPU)"
fi

say ""
say "done in $(($(date +%s) - START)) s; report $REPORT"
[ "$failed" -eq 0 ] && [ "$notrun" -eq 0 ] && [ "$benchfail" -eq 0 ] && [ "$gpuskip" -eq 0 ] &&
    [ "$pyfail" -eq 0 ]
