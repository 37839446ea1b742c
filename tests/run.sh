#!/usr/bin/env bash
# Builds tqkv and runs every test (the README's test command). Installs the build dependencies
# on Debian when they are missing and we are root. Set TQKV_WERROR=ON to fail on warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/deps.sh
tqkv_install_deps

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQKV_WERROR="${TQKV_WERROR:-OFF}" >/dev/null
cmake --build build -j"$(nproc)"
cd build && ctest --output-on-failure -j"$(nproc)"
