#!/usr/bin/env bash
# bench/run.sh [BUILD_DIR] [--quick]: every benchmark (`make bench`):
# control path, small-operation latency, data path. One results file,
# bench/results/bench-<time>.jsonl; the plain table on stdout; the README's
# Markdown table with: python3 bench/report.py bench/results/bench-<time>.jsonl
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$HERE/results"
export BENCH_OUT=${BENCH_OUT:-$HERE/results/bench-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
"$HERE/control.sh" "$@" >/dev/null
"$HERE/latency.sh" "$@" >/dev/null
"$HERE/data.sh" "$@" >/dev/null
echo "results: $BENCH_OUT" >&2
/usr/bin/python3 "$HERE/report.py" --plain "$BENCH_OUT"
