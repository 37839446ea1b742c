#!/usr/bin/env bash
# Sets tqkv up on a fresh Debian 12 machine and runs the daemon with its default configuration:
# installs the build dependencies (as root), builds in build/, then starts tqkvd in the
# foreground (Ctrl-C stops it). Extra arguments go to tqkvd (see `build/daemon/tqkvd --help`).
#
#   deploy/quickstart.sh                       # Unix socket in the runtime dir + TCP 127.0.0.1:7070
#   deploy/quickstart.sh --host-capacity 8G
#   deploy/quickstart.sh demo                  # start, store and read back a chunk with the CLI, stop
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/deps.sh
tqkv_install_deps

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target tqkvd tqkv >/dev/null
tqkvd=build/daemon/tqkvd
cli=build/client/cli/tqkv

if [ "${1:-}" != demo ]; then
    cat <<MSG
tqkvd is starting with its default configuration. In another terminal:
  $cli status                 # health, capacity, usage
  $cli bench --count 32       # raw PUT (the daemon encodes) then GET round trips
  $cli stats
  $cli --help
MSG
    exec "$tqkvd" "$@"
fi

# demo: a private daemon on a temp socket, a few CLI calls against it, then a clean stop.
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$tqkvd" --unix-socket "$dir/tqkvd.sock" --tcp "" --host-capacity 512M \
    --ready-file "$dir/ready" --log-level warn &
pid=$!
for _ in $(seq 100); do [ -s "$dir/ready" ] && break; sleep 0.05; done
export TQKV_URL="unix://$dir/tqkvd.sock"
set -x
"$cli" status
"$cli" bench --count 16 --size 4M
"$cli" stats
