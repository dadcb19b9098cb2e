#!/usr/bin/env bash
# Ferry's main job: a coordinator (with its own private etcd), a receiver and
# a sender moving 1 GiB of host memory through a real UCX put; the receiver
# checks every byte. Prints the timings and stops everything it started.
#
#   scripts/demo.sh [BUILD_DIR]      (FERRY_DEMO_SIZE=256MiB for a smaller run)
set -euo pipefail

BUILD_DIR=${1:-build}
SIZE=${FERRY_DEMO_SIZE:-1GiB}
COORD="$BUILD_DIR/coordinator/ferry-coordinator"
WORKER="$BUILD_DIR/worker/ferry-worker"
STATE=$(mktemp -d /tmp/ferry-demo-XXXXXX)
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
REQUEST_ID="demo-$$"
COORD_PID=""
RECV_PID=""
# The token through the environment, not the command line (/proc/*/cmdline is
# every local user's to read, and with it the request ID's metadata).
export FERRY_TOKEN="$TOKEN"

cleanup() {
    if [ -n "$RECV_PID" ] && kill -0 "$RECV_PID" 2>/dev/null; then
        kill -TERM "$RECV_PID"
        wait "$RECV_PID" || true
    fi
    if [ -n "$COORD_PID" ] && kill -0 "$COORD_PID" 2>/dev/null; then
        kill -TERM "$COORD_PID"
        wait "$COORD_PID" || true
    fi
    rm -rf "$STATE"
}
trap cleanup EXIT

echo "demo: starting ferry-coordinator with a private etcd (state in $STATE)"
"$COORD" --listen 127.0.0.1:0 --port-file "$STATE/port" --state-dir "$STATE" \
    >"$STATE/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 300); do
    [ -s "$STATE/port" ] && break
    kill -0 "$COORD_PID" 2>/dev/null || { cat "$STATE/coordinator.log"; exit 1; }
    sleep 0.1
done
[ -s "$STATE/port" ] || { echo "demo: coordinator did not start"; cat "$STATE/coordinator.log"; exit 1; }
TARGET="127.0.0.1:$(cat "$STATE/port")"
echo "demo: coordinator serving on $TARGET"

echo "demo: receiver registers $SIZE under request ID $REQUEST_ID; sender writes it"
# Under set -e a failing command would end the script here, before the
# report below (and the trap removes the coordinator's log): their statuses
# are taken instead.
"$WORKER" recv --coordinator "$TARGET" --request-id "$REQUEST_ID" \
    --size "$SIZE" --timeout 120 &
RECV_PID=$!
SEND_RC=0
"$WORKER" send --coordinator "$TARGET" --request-id "$REQUEST_ID" \
    --size "$SIZE" --timeout 120 || SEND_RC=$?
RECV_RC=0
# A sender that failed never reaches the receiver, which would wait out its
# --timeout before the report: stopped instead (it releases its record).
if [ "$SEND_RC" -ne 0 ]; then
    kill -TERM "$RECV_PID" 2>/dev/null || true # it may have ended on its own
fi
wait "$RECV_PID" || RECV_RC=$?
RECV_PID=""
if [ "$SEND_RC" -ne 0 ] || [ "$RECV_RC" -ne 0 ]; then
    echo "demo: FAILED (send $SEND_RC, recv $RECV_RC)"
    tail -20 "$STATE/coordinator.log"
    exit 1
fi
echo "demo: done: $SIZE moved and every byte verified by the receiver"
