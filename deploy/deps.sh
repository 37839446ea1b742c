#!/usr/bin/env bash
# The Debian 12 packages tqkv needs to build and test, installed when missing (as root).
# Sourced by tests/run.sh, deploy/quickstart.sh and .ci/run so the list lives in one place.
TQKV_DEB_PACKAGES=(build-essential cmake pkg-config libuv1-dev libhiredis-dev libprotobuf-c-dev
    protobuf-c-compiler libxxhash-dev liblz4-dev libssl-dev libinih-dev libmicrohttpd-dev
    redis-server redis-tools procps)

tqkv_install_deps() {
    local missing=() p
    for p in "${TQKV_DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages: ${missing[*]}" >&2
        echo "install them with: sudo apt-get install ${missing[*]}" >&2
        return 1
    fi
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
