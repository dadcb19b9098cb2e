#!/usr/bin/env bash
# deploy/check.sh: checks deploy/ without a cluster (CTest: deploy_check,
# label lint). Renders every overlay under deploy/k8s/overlays and every
# example under deploy/k8s/examples with `kubectl kustomize`, validates each
# rendered object against the Kubernetes API schemas (deploy/validate.mjs, npm
# kubernetes-models), checks what Ferry needs of them (each example together
# with the overlay it goes with), and checks deploy/Containerfile against the
# repository. The checks are in deploy/check.py (Debian's /usr/bin/python3
# with python3-yaml; kubectl, node and the npm packages come from
# scripts/install-deps.sh).
#
# KUBECTL names the kubectl to render with. Exit 0: all good; 1: a check
# failed; 77 (CTest: skipped): no kubectl new enough to render (>= 1.22), and
# every check that needs no rendering passed.
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

"$py" "$here/check.py" --repo "$repo" ${build:+--build "$build"}
