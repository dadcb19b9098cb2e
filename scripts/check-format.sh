#!/usr/bin/env bash
# Fails when clang-format (with the committed .clang-format) would change any
# of the project's C sources. Run by CTest as the `format` test.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find include common rpc coordinator worker tools tests bench fuzz python \
    -name build -prune -o \( -name '*.c' -o -name '*.h' \) -print | sort)
bad=0
for f in "${files[@]}"; do
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "not formatted: $f (run: clang-format -i $f)"
        bad=1
    fi
done
echo "check-format: ${#files[@]} files checked"
exit $bad
