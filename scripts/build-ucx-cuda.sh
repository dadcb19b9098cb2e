#!/usr/bin/env bash
# Builds UCX 1.13.1 with CUDA transports (cuda_copy, cuda_ipc) from Debian's
# own `ucx` source package, against the CUDA toolkit, into a prefix.
#
#   scripts/build-ucx-cuda.sh [PREFIX]
#
# PREFIX defaults to $FERRY_UCX_CUDA_PREFIX, else build-ucx-cuda/ in the
# repository. The build is cached: when PREFIX already holds the libraries,
# the CUDA transport module, ucx_info and ucx.pc, built from this UCX and the
# toolkit there now (its stamp), it exits at once; remove PREFIX to rebuild.
# Runs on one prefix wait for each other (PREFIX.lock). CUDA_HOME (default
# /usr/local/cuda) names the toolkit.
#
# Debian's libucx0 has host memory only; this is the same release with the
# same configure flags as debian/rules (--enable-mt, --disable-logging, ...)
# plus --with-cuda, minus verbs/rdmacm/java (single-node GPU checks only).
# Only src/ (libraries, ucx_info, ucx_perftest) is built and installed: test/apps/test_cuda_hook.c does not
# compile against CUDA 13 (cuCtxCreate changed). NVML comes from Debian's
# non-free libnvidia-ml-dev (nvml.h) and libnvidia-ml1 (link time); both are
# installed by `scripts/install-deps.sh --cuda-ucx`, which also adds the
# deb-src lines `apt-get source` needs. On a GPU machine the driver supplies
# libnvidia-ml.so.1 and libcuda.so.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-${FERRY_UCX_CUDA_PREFIX:-$ROOT/build-ucx-cuda}}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
UCX_VERSION=1.13.1
DEB_VERSION=1.13.1-1
JOBS=${JOBS:-$(nproc)}

mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)

# One build of a prefix at a time: two CI runs sharing the cache would
# install into it at once, or one would take a half-installed prefix for a
# built one. The lock is held (fd 9) until this script exits.
exec 9>"$PREFIX.lock"
flock 9

# What the prefix was built from; a prefix is complete once its stamp is
# written, last. A toolkit upgrade makes the stamp differ, and the prefix is
# built again (the CUDA transport links against that toolkit).
STAMP="$PREFIX/.ferry-built-from"
complete() {
    [ -e "$PREFIX/lib/libucp.so" ] && [ -e "$PREFIX/lib/ucx/libuct_cuda.so" ] &&
        [ -x "$PREFIX/bin/ucx_info" ] && [ -e "$PREFIX/lib/pkgconfig/ucx.pc" ]
}
if [ ! -x "$CUDA_HOME/bin/nvcc" ] || [ ! -e "$CUDA_HOME/include/cuda.h" ]; then
    if complete && [ -e "$STAMP" ]; then
        echo "build-ucx-cuda: UCX $UCX_VERSION with CUDA already in $PREFIX (no toolkit at" \
            "$CUDA_HOME to compare with its $(cat "$STAMP"))"
        exit 0
    fi
    echo "build-ucx-cuda: no CUDA toolkit at CUDA_HOME=$CUDA_HOME" >&2
    exit 1
fi
want="ucx $DEB_VERSION, $("$CUDA_HOME/bin/nvcc" --version | tail -n 1)"
if complete && [ ! -e "$STAMP" ]; then
    # Built by a version of this script that wrote no stamp: taken as built
    # from the toolkit there now.
    echo "$want" > "$STAMP"
fi
if complete && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "build-ucx-cuda: UCX $UCX_VERSION with CUDA already in $PREFIX"
    exit 0
fi
if [ -e "$STAMP" ]; then
    echo "build-ucx-cuda: $PREFIX was built from $(cat "$STAMP"); building it again from $want"
    rm -f "$STAMP"
fi

"$ROOT/scripts/install-deps.sh" --cuda-ucx

# The source tree lives outside any git checkout (UCX's configure would
# otherwise stamp itself with Ferry's branch and revision); on failure it is
# kept for its logs.
SRC_PARENT=$(mktemp -d "${TMPDIR:-/tmp}/ferry-ucx-cuda.XXXXXX")
start=$(date +%s)
(cd "$SRC_PARENT" && apt-get source -q "ucx=$DEB_VERSION")
SRC=$SRC_PARENT/ucx-$UCX_VERSION
cd "$SRC"

./autogen.sh >"$SRC_PARENT/autogen.log" 2>&1 ||
    { tail -n 30 "$SRC_PARENT/autogen.log" >&2; echo "build-ucx-cuda: failed ($SRC_PARENT)" >&2; exit 1; }
./configure --prefix="$PREFIX" \
    --with-cuda="$CUDA_HOME" \
    --enable-mt --disable-backtrace-detail --disable-logging \
    --enable-devel-headers --enable-cma --disable-static \
    --without-verbs --without-rdmacm --without-java --without-go \
    --without-rocm --without-knem --without-xpmem --without-ugni \
    --disable-doxygen-doc --disable-debug \
    >"$SRC_PARENT/configure.log" 2>&1 ||
    { tail -n 30 "$SRC_PARENT/configure.log" >&2; echo "build-ucx-cuda: failed ($SRC_PARENT)" >&2; exit 1; }
if ! grep -q '^#define HAVE_CUDA 1' config.h; then
    echo "build-ucx-cuda: configure did not enable CUDA (see $SRC_PARENT/configure.log):" >&2
    grep -i cuda "$SRC_PARENT/configure.log" | tail -n 20 >&2
    exit 1
fi

# The libraries (and their transport modules), ucx_info and ucx_perftest.
for dir in src/ucm src/ucs src/uct src/ucp src/tools/info src/tools/perf; do
    { make -C "$dir" -j "$JOBS" && make -C "$dir" install; } >>"$SRC_PARENT/make.log" 2>&1 ||
        { tail -n 40 "$SRC_PARENT/make.log" >&2; echo "build-ucx-cuda: failed ($SRC_PARENT)" >&2; exit 1; }
done
make install-pkgconfigDATA >>"$SRC_PARENT/make.log" 2>&1 ||
    { tail -n 40 "$SRC_PARENT/make.log" >&2; echo "build-ucx-cuda: failed ($SRC_PARENT)" >&2; exit 1; }

if [ ! -e "$PREFIX/lib/ucx/libuct_cuda.so" ]; then
    echo "build-ucx-cuda: built, but $PREFIX/lib/ucx/libuct_cuda.so is missing ($SRC_PARENT)" >&2
    exit 1
fi
rm -rf "$SRC_PARENT"
echo "$want" > "$STAMP"
echo "build-ucx-cuda: UCX $UCX_VERSION with CUDA in $PREFIX ($(($(date +%s) - start)) s)"
"$PREFIX/bin/ucx_info" -v | head -n 3
