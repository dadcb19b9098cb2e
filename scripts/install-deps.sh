#!/usr/bin/env bash
# Installs every Debian package Ferry needs to build, test and benchmark.
# This list is the only place the project names its system packages.
# Idempotent: packages already installed are skipped; apt-get runs only when
# something is missing. Uses sudo when not run as root.
#
# `install-deps.sh --cuda-ucx` installs, in addition, what building UCX with
# CUDA transports needs (scripts/build-ucx-cuda.sh): autotools, and NVML's
# header and library from Debian's non-free archive. It first adds, once, a
# sources file with Debian's deb-src lines (for `apt-get source ucx`) and the
# contrib/non-free components (libnvidia-ml1 depends on packages in contrib).
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config clang-format clang
    libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
    libucx-dev ucx-utils
    etcd-server etcd-client
    libcurl4-openssl-dev libcjson-dev libssl-dev openssl
    libcmocka-dev
    python3-grpcio python3-grpc-tools python3-yaml
)

# Optional: only with --cuda-ucx (scripts/build-ucx-cuda.sh).
CUDA_UCX_PACKAGES=(
    dpkg-dev autoconf automake libtool libnuma-dev
    libnvidia-ml-dev libnvidia-ml1
)
CUDA_UCX_SOURCES=/etc/apt/sources.list.d/ferry-ucx-cuda.sources

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

need_update=0
if [ "${1:-}" = "--cuda-ucx" ]; then
    PACKAGES+=("${CUDA_UCX_PACKAGES[@]}")
    if [ ! -f "$CUDA_UCX_SOURCES" ]; then
        echo "install-deps: adding $CUDA_UCX_SOURCES (deb-src main, contrib, non-free)"
        $SUDO tee "$CUDA_UCX_SOURCES" >/dev/null <<'EOF'
# Added by Ferry's scripts/install-deps.sh --cuda-ucx: Debian's ucx source
# package and the non-free NVML header/library, to build UCX with CUDA.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        need_update=1
    fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ] && [ "$need_update" -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
    $SUDO apt-get update -q
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
