#!/usr/bin/env bash
# Installs every Debian package Ferry needs to build, test and benchmark.
# This list is the only place the project names its system packages.
# Idempotent: packages already installed are skipped; apt-get runs only when
# something is missing. Uses sudo when not run as root. Services that
# packages would start (etcd, prometheus) are not started (DAEMONS).
#
# Then the npm packages the suite uses (package.json at the repository root:
# the Node.js client test in tests/node and the Kubernetes schema validation
# of deploy/), exactly as package-lock.json pins them, with `npm ci` into
# node_modules/; skipped when node_modules/ was installed from this very lock
# file (a stamp holds its SHA-256). No package needs an install script
# (--ignore-scripts).
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
    libmicrohttpd-dev python3-prometheus-client
    python3-dev python3-setuptools python3-pip python3-wheel
    python3-pytest python3-numpy python3-torch
)

# Commands that a non-Debian package may provide instead (NodeSource's
# nodejs carries npm; a newer kubectl may come from Kubernetes' own
# repository; promtool, for the alert rules, is all the suite needs of
# prometheus): the Debian package is installed only when the command is
# missing. command:package. Debian 12's kubernetes-client is kubectl 1.20,
# whose kustomize (v2) cannot render deploy/'s kustomizations (`labels:`
# needs kubectl >= 1.22): deploy_check then runs the checks that need no
# rendering and reports itself skipped (exit 77); for the rest, install
# kubectl from Kubernetes' own repository (pkgs.k8s.io) instead.
COMMANDS=(
    node:nodejs npm:npm kubectl:kubernetes-client promtool:prometheus
)

# Optional: only with --cuda-ucx (scripts/build-ucx-cuda.sh).
CUDA_UCX_PACKAGES=(
    dpkg-dev autoconf automake libtool libnuma-dev
    libnvidia-ml-dev libnvidia-ml1
)
CUDA_UCX_SOURCES=/etc/apt/sources.list.d/ferry-ucx-cuda.sources

# Packages whose install starts a network service on a systemd host, with
# that service's unit: etcd-server starts an etcd on 127.0.0.1:2379 without
# auth (any local user could read and write it) and prometheus one on :9090
# of every interface, where the suite needs only the binaries (its tests
# start their own etcd on free ports; the alert rules need only promtool).
# package:unit. When this script installs them, their start is refused for
# the install (policy-rc.d) and the units are disabled after it.
DAEMONS=(etcd-server:etcd.service prometheus:prometheus.service)
POLICY_RC_D=/usr/sbin/policy-rc.d

case "${1:-}" in
"" | --cuda-ucx) ;;
*)
    echo "install-deps: unknown argument '$1' (usage: install-deps.sh [--cuda-ucx])" >&2
    exit 2
    ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo > /dev/null 2>&1; then
        echo "install-deps: not root and no sudo: run scripts/install-deps.sh as root" >&2
        exit 1
    fi
    SUDO="sudo"
fi
# Waits for another apt (a second make at once, unattended-upgrades) rather
# than failing at once on its lock.
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
if [ -n "$SUDO" ]; then
    APT=("$SUDO" "${APT[@]}")
fi

need_update=0
if [ "${1:-}" = "--cuda-ucx" ]; then
    # The sources file below names Debian 12's suite: on another release it
    # would mix that release's packages with bookworm's.
    # shellcheck source=/dev/null
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if [ "$codename" != bookworm ]; then
        echo "install-deps: --cuda-ucx adds Debian 12 (bookworm) sources; this is" \
            "'${codename:-unknown}'" >&2
        exit 1
    fi
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

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The commands and npm packages are for the test suite: a copy of this script
# alone (deploy/Containerfile's build stage) installs only the Debian list.
with_tests=0
if [ -f "$repo/package-lock.json" ]; then
    with_tests=1
else
    COMMANDS=()
fi
for c in "${COMMANDS[@]}"; do
    if ! command -v "${c%%:*}" > /dev/null 2>&1; then
        missing+=("${c#*:}")
    fi
done

# The units of the DAEMONS this run installs.
units=()
for d in "${DAEMONS[@]}"; do
    for m in "${missing[@]}"; do
        if [ "$m" = "${d%%:*}" ]; then
            units+=("${d#*:}")
        fi
    done
done
policy_added=0
remove_policy() {
    if [ "$policy_added" = 1 ]; then
        $SUDO rm -f "$POLICY_RC_D"
        policy_added=0
    fi
}
trap remove_policy EXIT

if [ ${#missing[@]} -eq 0 ] && [ "$need_update" -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages and ${#COMMANDS[@]} commands present"
elif [ ${#missing[@]} -eq 0 ]; then
    "${APT[@]}" update -q
else
    echo "install-deps: installing ${missing[*]}"
    "${APT[@]}" update -q
    # invoke-rc.d asks policy-rc.d before it starts a service: 101 refuses.
    # One already there (a container's, even a dangling link) is the
    # machine's and is left as it is.
    if [ ${#units[@]} -gt 0 ] && [ ! -e "$POLICY_RC_D" ] && [ ! -L "$POLICY_RC_D" ]; then
        printf '#!/bin/sh\n# Ferry install-deps.sh: no service starts during its install.\nexit 101\n' |
            $SUDO tee "$POLICY_RC_D" > /dev/null
        $SUDO chmod 755 "$POLICY_RC_D"
        policy_added=1
    fi
    "${APT[@]}" install -y -q --no-install-recommends "${missing[@]}"
    remove_policy
    if [ ${#units[@]} -gt 0 ] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now "${units[@]}" || true
    fi
    if [ ${#units[@]} -gt 0 ]; then
        echo "install-deps: ${units[*]} installed but neither started nor enabled (the suite" \
            "needs their binaries only)"
    fi
fi

if [ "$with_tests" = 0 ]; then
    echo "install-deps: no package-lock.json beside this script; npm packages skipped"
    exit 0
fi
stamp="$repo/node_modules/.ferry-lock-sha256"
want="$(sha256sum "$repo/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "install-deps: node_modules matches package-lock.json"
else
    echo "install-deps: npm ci (package-lock.json)"
    (cd "$repo" && npm ci --no-audit --no-fund --ignore-scripts)
    echo "$want" > "$stamp"
fi
