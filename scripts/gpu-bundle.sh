#!/usr/bin/env bash
# Packs what a bare GPU machine needs to run Ferry's GPU checks: a machine
# with the CUDA driver, the CUDA 13 toolkit, Python 3.12 and PyTorch, but
# none of Debian's libraries and no package registry (x86-64).
#
#   scripts/gpu-bundle.sh BUILD_DIR UCX_PREFIX OUT_DIR      (make gpu-bundle)
#
# BUILD_DIR is a Ferry build against the CUDA-enabled UCX in UCX_PREFIX
# (make build-cuda-ucx). Writes OUT_DIR/ferry-gpu/ and
# OUT_DIR/ferry-gpu.tar.gz, at most 64 MiB (checked; the size is printed):
#
#   run-gpu-checks.sh    the one command to run there (scripts/run-gpu-checks.sh)
#   build/               Ferry's programs, benchmarks (ferry_bench_gpu) and C
#                        test executables (and the tests' fake CUDA driver),
#                        at their build-tree paths (the tests find the
#                        programs through FERRY_BUILD_DIR), debug info stripped
#   tests.tsv            name, path, timeout, labels, environment, arguments of each C
#                        test, from CTest (python tests are left out: no
#                        Debian grpcio there)
#   build/python/ferry/  the Python package (_ferry.abi3.so: Python's stable ABI,
#                        so the machine's 3.12 loads it), where the build has it;
#                        run-gpu-checks.sh runs its CUDA tests with the machine's
#                        PyTorch
#   pylib/               Debian's pytest and what it imports (pure Python), for a
#                        machine without pytest
#   src/                 the source-tree files tests read (FERRY_SOURCE_DIR), the
#                        package's tests (python/tests/) and their harness
#   ucx/                 the CUDA-enabled UCX: bin/ucx_info, bin/ucx_perftest,
#                        lib/ (libraries; transport modules in lib/ucx/)
#   lib/                 every other shared library those load (their ldd
#                        closure), except glibc's and the driver's (libcuda,
#                        libnvidia-*), which the machine has
#   bin/etcd, bin/etcdctl  Debian's etcd and its client (static Go binaries;
#                        test_etcd_auth runs etcdctl)
#   bin/ferry_cuda_memcpy_bw   bench/cuda_memcpy_bw.cu built with nvcc
#                        (CUDA runtime linked statically)
#   BUNDLE.txt           what was packed, from which commit, on what
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:?usage: gpu-bundle.sh BUILD_DIR UCX_PREFIX OUT_DIR}" && pwd)
UCX=$(cd "${2:?usage: gpu-bundle.sh BUILD_DIR UCX_PREFIX OUT_DIR}" && pwd)
OUT=${3:?usage: gpu-bundle.sh BUILD_DIR UCX_PREFIX OUT_DIR}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ETCD=${FERRY_ETCD_BIN:-/usr/bin/etcd}
ETCDCTL=$(dirname "$ETCD")/etcdctl
LIMIT=$((64 << 20))

die() { echo "gpu-bundle: $*" >&2; exit 1; }
[ -e "$UCX/lib/ucx/libuct_cuda.so" ] || die "$UCX has no CUDA transports (scripts/build-ucx-cuda.sh)"
[ -x "$BUILD/coordinator/ferry-coordinator" ] || die "$BUILD is not a Ferry build"
built_with=$(sed -n 's/^FERRY_UCX_PREFIX:[A-Z]*=//p' "$BUILD/CMakeCache.txt")
[ -n "$built_with" ] && [ "$(cd "$BUILD" && cd "$built_with" 2>/dev/null && pwd)" = "$UCX" ] ||
    die "$BUILD is not built against $UCX (cmake -DFERRY_UCX_PREFIX=$UCX)"
[ -x "$ETCD" ] || die "no etcd at $ETCD"
[ -x "$ETCDCTL" ] || die "no etcdctl at $ETCDCTL"
[ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc in CUDA_HOME=$CUDA_HOME"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
B=$OUT/ferry-gpu
rm -rf "$B" "$OUT/ferry-gpu.tar.gz"
mkdir -p "$B/build" "$B/bin" "$B/lib" "$B/ucx/bin" "$B/ucx/lib" "$B/src"

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }
# Copies $1 to $2 (a file path), without debug info.
put() {
    mkdir -p "$(dirname "$2")"
    cp -L "$1" "$2"
    chmod u+w "$2"
    strip --strip-debug "$2" 2>/dev/null || true
}

# --- Ferry: programs and the C tests CTest runs -------------------------------
put "$BUILD/coordinator/ferry-coordinator" "$B/build/coordinator/ferry-coordinator"
while IFS= read -r -d '' f; do
    rel=${f#"$BUILD"/}
    put "$f" "$B/build/$rel"
done < <(find "$BUILD/worker" "$BUILD/bench" -type f -perm -u+x -print0 2>/dev/null)

ctest --test-dir "$BUILD" --show-only=json-v1 >"$OUT/ctest.json"
/usr/bin/python3 - "$BUILD" "$OUT/ctest.json" "$B/tests.tsv" <<'PYEOF'
import json, os, sys
build, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
with open(src) as f:
    tests = json.load(f)["tests"]
rows = []
for t in tests:
    cmd = t.get("command") or []
    # C executables of the build; arguments only as plain words (the fuzz
    # corpus replays name source-tree paths and are left out).
    if not cmd or not cmd[0].startswith(build + "/"):
        continue
    if any(a.startswith("/") or "\t" in a or " " in a for a in cmd[1:]):
        continue
    with open(cmd[0], "rb") as f:
        if f.read(4) != b"\x7fELF":
            continue
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    env = [e for e in props.get("ENVIRONMENT", [])
           if not e.startswith(("FERRY_BUILD_DIR=", "FERRY_SOURCE_DIR="))]
    if any("\t" in e or " " in e for e in env):
        sys.exit("gpu-bundle: test %s: environment with blanks: %r" % (t["name"], env))
    labels = props.get("LABELS", [])
    rows.append("\t".join([t["name"], os.path.relpath(cmd[0], build),
                           str(int(props.get("TIMEOUT", 120))),
                           ",".join(labels) or "-", " ".join(env) or "-",
                           " ".join(cmd[1:]) or "-"]))
with open(dst, "w") as f:
    f.write("# name\tpath (under build/)\ttimeout_s\tlabels\tenvironment\targuments\n")
    f.write("\n".join(rows) + "\n")
print("gpu-bundle: %d C tests" % len(rows))
PYEOF
rm -f "$OUT/ctest.json"
while IFS=$'\t' read -r name rel _; do
    case $name in '#'*) continue ;; esac
    put "$BUILD/$rel" "$B/build/$rel"
done <"$B/tests.tsv"
# The tests' fake CUDA driver (test_worker_cuda_fake loads it through
# FERRY_BUILD_DIR): where a build has it.
[ ! -e "$BUILD/tests/worker/libferry_fakecuda.so" ] ||
    put "$BUILD/tests/worker/libferry_fakecuda.so" "$B/build/tests/worker/libferry_fakecuda.so"

# Source-tree files the tests read through FERRY_SOURCE_DIR.
(cd "$ROOT" && find tests -name '*.sh' -o -name '*.pem' -o -name '*.json' |
    while read -r f; do mkdir -p "$B/src/$(dirname "$f")" && cp "$f" "$B/src/$f"; done)

# --- The Python package, its tests, and pytest ----------------------------------
# Its CUDA tests are the only check of torch's CUDA tensors through the
# binding on a GPU. The module's libraries (libferry and the rest) join the
# ldd closure below.
if [ -e "$BUILD/python/ferry/_ferry.abi3.so" ]; then
    for f in "$BUILD"/python/ferry/*; do
        [ -f "$f" ] || continue # a __pycache__ of a run by hand
        put "$f" "$B/build/python/ferry/$(basename "$f")"
    done
    mkdir -p "$B/src/python/tests" "$B/src/tests/python"
    cp "$ROOT"/python/tests/*.py "$B/src/python/tests/"
    cp "$ROOT/tests/python/ferry_harness.py" "$B/src/tests/python/"
    /usr/bin/python3 - "$B/pylib" <<'PYEOF'
import importlib, os, shutil, sys
dst = sys.argv[1]
os.makedirs(dst)
for name in ("pytest", "_pytest", "pluggy", "iniconfig", "attr", "attrs", "packaging"):
    mod = importlib.import_module(name)
    path = mod.__file__
    src = os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path
    target = os.path.join(dst, os.path.basename(src))
    if os.path.isdir(src):
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy(src, target)
# pytest's own `py` shim (pytest 7.2 imports py.error and py.path from it).
shutil.copy(os.path.join(os.path.dirname(os.path.dirname(importlib.import_module("_pytest").__file__)),
                         "py.py"), dst)
PYEOF
else
    echo "gpu-bundle: $BUILD has no Python package (python3-dev): its CUDA tests are left out"
fi

# --- UCX ----------------------------------------------------------------------
put "$UCX/bin/ucx_info" "$B/ucx/bin/ucx_info"
put "$UCX/bin/ucx_perftest" "$B/ucx/bin/ucx_perftest"
(cd "$UCX/lib" && find . -name '*.so*' \( -type f -o -type l \) -print) | while read -r f; do
    mkdir -p "$B/ucx/lib/$(dirname "$f")"
    if [ -L "$UCX/lib/$f" ]; then
        cp -P "$UCX/lib/$f" "$B/ucx/lib/$f"
    else
        put "$UCX/lib/$f" "$B/ucx/lib/$f"
    fi
done

# --- etcd and the CUDA copy reference -----------------------------------------
cp "$ETCD" "$B/bin/etcd"
cp "$ETCDCTL" "$B/bin/etcdctl"
"$CUDA_HOME/bin/nvcc" -O2 -o "$B/bin/ferry_cuda_memcpy_bw" "$ROOT/bench/cuda_memcpy_bw.cu"

# --- The ldd closure ----------------------------------------------------------
# glibc's libraries and the loader come from the machine, as do the driver's
# (libcuda.so.1, libnvidia-ml.so.1, ...). Everything else any packed ELF file
# loads is copied to lib/ under the name the loader asks for.
skip='^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libutil|libnsl|libanl|libmvec|libBrokenLocale|libthread_db)\.so|^libcuda\.so|^libnvidia-'
export LD_LIBRARY_PATH="$UCX/lib:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
find "$B" -type f | while read -r f; do
    is_elf "$f" || continue
    case $f in "$B"/bin/etcd | "$B"/bin/etcdctl) continue ;; esac
    ldd "$f" 2>/dev/null || true
done | awk '$2 == "=>" && $3 != "not" { print $1, $3 } $2 == "=>" && $3 == "not" { print $1, "MISSING" }' |
    sort -u >"$OUT/closure.txt"
missing=$(awk '$2 == "MISSING" { print $1 }' "$OUT/closure.txt" | grep -Ev "$skip" || true)
[ -z "$missing" ] || die "libraries not found here: $missing"
while read -r soname path; do
    [ "$path" = MISSING ] && continue
    echo "$soname" | grep -Eq "$skip" && continue
    case $path in "$UCX"/*) continue ;; esac
    put "$path" "$B/lib/$soname"
done <"$OUT/closure.txt"
rm -f "$OUT/closure.txt"

# Check: with the runner's LD_LIBRARY_PATH, every library a packed file loads
# resolves inside the bundle, except glibc's and the driver's.
export LD_LIBRARY_PATH="$B/ucx/lib:$B/lib"
outside=$(find "$B" -type f | while read -r f; do
    is_elf "$f" || continue
    case $f in "$B"/bin/etcd | "$B"/bin/etcdctl) continue ;; esac
    ldd "$f" 2>/dev/null | awk -v f="${f#"$B"/}" '$2 == "=>" { print $1, $3, f }'
done | grep -Ev "$skip" | awk -v b="$B/" 'index($2, b) != 1' | sort -u || true)
[ -z "$outside" ] || die "libraries that would load from outside the bundle:
$outside"

# --- The runner and the manifest ----------------------------------------------
cp "$ROOT/scripts/run-gpu-checks.sh" "$B/run-gpu-checks.sh"
chmod +x "$B/run-gpu-checks.sh"
{
    echo "Ferry GPU bundle"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (modified)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -n 1)"
    echo "cuda toolkit: $("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1)"
    echo "ucx: $("$UCX/bin/ucx_info" -v | sed -n 's/^# Version //p') from $UCX"
    echo "etcd: $("$ETCD" --version | head -n 1)"
    echo "needs glibc >= $(find "$B" -type f | while read -r f; do is_elf "$f" && objdump -T "$f" 2>/dev/null; done |
        grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
    echo
    echo "libraries (lib/):"
    ls "$B/lib" | sed 's/^/  /'
} >"$B/BUNDLE.txt"

tar -C "$OUT" -czf "$OUT/ferry-gpu.tar.gz" ferry-gpu
unpacked=$(du -sb "$B" | cut -f1)
packed=$(stat -c %s "$OUT/ferry-gpu.tar.gz")
printf 'gpu-bundle: %s: %.1f MiB unpacked, %s: %.1f MiB (the .tar.gz travels: limit 64 MiB)\n' \
    "$B" "$(awk -v n="$unpacked" 'BEGIN {print n / 1048576}')" \
    "$OUT/ferry-gpu.tar.gz" "$(awk -v n="$packed" 'BEGIN {print n / 1048576}')"
[ "$packed" -le "$LIMIT" ] || die "the bundle is over 64 MiB packed"
