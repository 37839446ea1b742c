#!/usr/bin/env bash
# Builds tqkv and runs every test (the README's test command). Installs the build dependencies
# on Debian when they are missing and we are root. Set TQKV_WERROR=ON to fail on warnings.
set -euo pipefail
cd "$(dirname "$0")/.."

need=(build-essential cmake pkg-config libuv1-dev libhiredis-dev libprotobuf-c-dev
      protobuf-c-compiler libxxhash-dev liblz4-dev libssl-dev libinih-dev redis-server redis-tools)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQKV_WERROR="${TQKV_WERROR:-OFF}" >/dev/null
cmake --build build -j"$(nproc)"
cd build && ctest --output-on-failure -j"$(nproc)"
