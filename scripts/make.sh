#!/usr/bin/env bash
# The README's two commands on a machine that may not have make yet (a fresh
# Debian 12 has none: it is not among the packages every install gets):
# installs what the project needs first (scripts/install-deps.sh, whose list
# has build-essential, and so make), then runs make with the arguments given,
# from the repository root. `bash scripts/make.sh test` is `make test` where
# make is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v make >/dev/null 2>&1; then
    ./scripts/install-deps.sh
fi
exec make "$@"
