#!/bin/bash
# tests/deps.sh: install what the build and the tests need, on Debian 12.
# Does nothing when everything is present; needs root (apt-get) otherwise.
# With --build, only what `make all` needs (make serve, make bench: a fresh
# machine need not fetch clang and valgrind to serve a disk or run the
# benchmark).  With other arguments, those packages instead (bench/run.sh:
# the peer servers).
set -euo pipefail
build=(build-essential pkg-config liblmdb-dev libxxhash-dev uuid-dev
       libnl-genl-3-dev libjansson-dev libgnutls28-dev liburing-dev)
pkgs=("${build[@]}" lmdb-utils libnbd-bin python3-libnbd qemu-utils fio fuse3
      e2fsprogs nbdkit socat jq util-linux mount clang-format
      clang libclang-rt-14-dev valgrind gnutls-bin)
if [ "${1:-}" = --build ]; then
    pkgs=("${build[@]}")
elif [ $# -gt 0 ]; then
    pkgs=("$@")
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "tests/deps.sh: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
fi
echo "tests/deps.sh: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
