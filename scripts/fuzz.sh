#!/usr/bin/env bash
# Runs every fuzz target (fuzz/README.md) for FUZZ_SECONDS each (default 30)
# over a scratch copy of its committed corpus, under ASan+UBSan. Fails on
# the first target that crashes, leaks or breaks an invariant; the input
# that did it is left in <build>/fuzz-artifacts/<target>/ (copy it into
# fuzz/corpus/<target>/crash-<what> as a regression input).
#
# Usage: scripts/fuzz.sh BUILD_DIR   (a build configured with FERRY_FUZZ=ON)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/fuzz.sh BUILD_DIR}
seconds=${FUZZ_SECONDS:-30}
targets=$(cd fuzz/corpus && ls)

for t in $targets; do
    bin="$build/fuzz/$t"
    [ -x "$bin" ] || { echo "fuzz: $bin is missing (build with -DFERRY_FUZZ=ON)"; exit 1; }
    work="$build/fuzz-work/$t"
    artifacts="$build/fuzz-artifacts/$t"
    rm -rf "$work" "$artifacts"
    mkdir -p "$work" "$artifacts"
    cp fuzz/corpus/"$t"/* "$work"/
    echo "fuzz: $t for ${seconds}s"
    if ! "$bin" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$artifacts/" "$work" >"$build/fuzz-work/$t.log" 2>&1; then
        tail -n 60 "$build/fuzz-work/$t.log"
        echo "fuzz: $t FAILED; the input is in $artifacts/"
        exit 1
    fi
    # The last status line (#runs, cov, ft, corp, exec/s) for the record.
    grep -E '^#[0-9]+' "$build/fuzz-work/$t.log" | tail -n 1 | sed "s/^/fuzz: $t: /"
done
echo "fuzz: all targets ran ${seconds}s without a crash"
