#!/usr/bin/env bash
# deploy/check.sh: checks deploy/ without a cluster (CTest: deploy_check,
# label lint). Parses every manifest under deploy/k8s and checks what Ferry
# needs of them, and checks deploy/Containerfile against the repository; the
# checks themselves are in deploy/check.py (run by Debian's /usr/bin/python3
# with python3-yaml, both from scripts/install-deps.sh).
#
# Where `kubectl` is on PATH (or $KUBECTL) it also renders deploy/k8s with `kubectl kustomize`
# and checks the rendered objects too. Exit 0: all good; 1: a check failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py=/usr/bin/python3

if ! "$py" -c 'import yaml' 2>/dev/null; then
    echo "deploy/check.sh: $py cannot import yaml; run scripts/install-deps.sh (python3-yaml)" >&2
    exit 1
fi

# The build tree to check the image's runtime packages against: FERRY_BUILD_DIR,
# or the one CTest runs us from (<build>/tests), or none.
build="${FERRY_BUILD_DIR:-}"
if [ -z "$build" ] && [ -f "$PWD/../CMakeCache.txt" ]; then
    build="$(cd "$PWD/.." && pwd)"
fi

# KUBECTL names the kubectl to render with; KUBECTL= (empty) skips rendering.
kubectl="${KUBECTL-kubectl}"
rendered=""
if [ -n "$kubectl" ] && command -v "$kubectl" > /dev/null 2>&1; then
    rendered="$(mktemp)"
    trap 'rm -f "$rendered"' EXIT
    if ! "$kubectl" kustomize "$here/k8s" > "$rendered" 2> "$rendered.err"; then
        echo "deploy/check.sh: kubectl kustomize deploy/k8s failed:" >&2
        cat "$rendered.err" >&2
        rm -f "$rendered.err"
        exit 1
    fi
    rm -f "$rendered.err"
fi

"$py" "$here/check.py" --repo "$repo" ${build:+--build "$build"} ${rendered:+--rendered "$rendered"}
