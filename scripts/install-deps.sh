#!/usr/bin/env bash
# Installs every Debian package Ferry needs to build, test and benchmark.
# This list is the only place the project names its system packages.
# Idempotent: packages already installed are skipped; apt-get runs only when
# something is missing. Uses sudo when not run as root.
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

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
