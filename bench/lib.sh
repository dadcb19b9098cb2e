# bench/lib.sh: shared shell helpers for the benchmark scripts (sourced).
#
# Starts a private etcd and ferry-coordinator replicas on free loopback ports
# under one temporary directory, and stops every process it started (by its
# own PID, recorded when started) when the calling script exits.

BENCH_PIDS=()
BENCH_TMP=""
BENCH_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# bench_args NAME "$@": the arguments every script takes, [BUILD_DIR] [--quick].
# Sets BUILD_DIR (absolute), QUICK (0/1) and BENCH_OUT (default
# bench/results/NAME-<time>.jsonl), and makes the results folder.
bench_args() {
    local name=$1 arg
    shift
    BUILD_DIR=build
    QUICK=0
    for arg in "$@"; do
        case $arg in
        --quick) QUICK=1 ;;
        -*) echo "usage: $0 [BUILD_DIR] [--quick]" >&2; exit 2 ;;
        *) BUILD_DIR=$arg ;;
        esac
    done
    BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
    mkdir -p "$BENCH_HERE/results"
    BENCH_OUT=${BENCH_OUT:-$BENCH_HERE/results/$name-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
}

bench_die() {
    echo "bench: $*" >&2
    exit 1
}

bench_tmp() {
    if [ -z "$BENCH_TMP" ]; then
        BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-XXXXXX")
    fi
}

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BENCH_PIDS=()
    if [ -n "$BENCH_TMP" ] && [ -z "${BENCH_KEEP_TMP:-}" ]; then
        rm -rf "$BENCH_TMP"
    fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# A loopback TCP port that was free a moment ago.
bench_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits up to $2 tenths of a second for command $1 to succeed.
bench_wait_for() {
    local i
    for i in $(seq "$2"); do
        if eval "$1"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# bench_start_etcd: sets ETCD_ENDPOINT.
bench_start_etcd() {
    bench_tmp
    local cport pport dir
    cport=$(bench_free_port)
    pport=$(bench_free_port)
    dir="$BENCH_TMP/etcd-$cport"
    mkdir -p "$dir"
    ETCD_ENDPOINT="http://127.0.0.1:$cport"
    "${FERRY_ETCD:-/usr/bin/etcd}" --name b --data-dir "$dir/data" \
        --listen-client-urls "$ETCD_ENDPOINT" --advertise-client-urls "$ETCD_ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$pport" \
        --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "b=http://127.0.0.1:$pport" >"$dir/etcd.log" 2>&1 &
    BENCH_PIDS+=($!)
    bench_wait_for "curl -sf $ETCD_ENDPOINT/health >/dev/null" 150 ||
        { tail -20 "$dir/etcd.log" >&2; bench_die "etcd did not start"; }
}

# bench_start_coord NAME: starts a replica on $ETCD_ENDPOINT; appends its
# target to COORD_TARGETS and its PID to COORD_PIDS (comma-separated).
bench_start_coord() {
    bench_tmp
    local name=$1 dir="$BENCH_TMP/coord-$1"
    mkdir -p "$dir"
    "$BUILD_DIR/coordinator/ferry-coordinator" --listen 127.0.0.1:0 --port-file "$dir/port" \
        --name "$name" --etcd "$ETCD_ENDPOINT" ${FERRY_BENCH_COORD_ARGS:-} \
        >"$dir/coordinator.log" 2>&1 &
    BENCH_PIDS+=($!)
    COORD_PIDS="${COORD_PIDS:+$COORD_PIDS,}$!"
    bench_wait_for "test -s $dir/port" 150 ||
        { tail -20 "$dir/coordinator.log" >&2; bench_die "coordinator $name did not start"; }
    COORD_TARGETS="${COORD_TARGETS:+$COORD_TARGETS,}127.0.0.1:$(cat "$dir/port")"
}

# bench_stop_last: stops the process started last (TERM, then KILL after 5 s).
bench_stop_last() {
    local pid=${BENCH_PIDS[-1]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'BENCH_PIDS[-1]'
}

# bench_start_echo: starts the echo server (ferry_bench_control --mode
# echo-server: the same rpc/ layer as the coordinator, an empty handler);
# sets ECHO_TARGET and ECHO_PID.
bench_start_echo() {
    bench_tmp
    local dir="$BENCH_TMP/echo"
    mkdir -p "$dir"
    "$BUILD_DIR/bench/ferry_bench_control" --mode echo-server --listen 127.0.0.1:0 \
        --port-file "$dir/port" >"$dir/echo.log" 2>&1 &
    BENCH_PIDS+=($!)
    ECHO_PID=$!
    bench_wait_for "test -s $dir/port" 150 ||
        { tail -20 "$dir/echo.log" >&2; bench_die "echo server did not start"; }
    ECHO_TARGET="127.0.0.1:$(cat "$dir/port")"
}

# The machine, for the results file.
bench_machine_json() {
    local model cores
    model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
    cores=$(nproc)
    printf '{"cpu":"%s","cores":%s,"kernel":"%s","ucx":"%s","etcd":"%s","date":"%s"}' \
        "$model" "$cores" "$(uname -r)" \
        "$(ucx_info -v 2>/dev/null | sed -n "s/^# Version //p")" \
        "$(${FERRY_ETCD:-/usr/bin/etcd} --version 2>/dev/null | sed -n 's/^etcd Version: //p')" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
