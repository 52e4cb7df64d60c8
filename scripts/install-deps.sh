#!/usr/bin/env bash
# Installs the Debian 12 packages vmbackup needs to build, test and run its demo. Idempotent: apt is
# touched only when a package is missing. Run as root (or with sudo available).
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  libboost-dev libssl-dev libcurl4-openssl-dev libnfs-dev liblz4-dev libabsl-dev nlohmann-json3-dev
  libnbd-dev librbd-dev
  libgtest-dev libgmock-dev libbenchmark-dev pybind11-dev python3-dev python3-pytest
  e2fsprogs util-linux xfsprogs python3-botocore
  clang libclang-rt-14-dev llvm-14
)
# Extra packages a caller may ask for: install-deps.sh pkg...; with --only, just those
# (the test-server scripts use `install-deps.sh --only <their packages>`).
if [ "${1:-}" = --only ]; then
  shift
  PKGS=()
fi
PKGS+=("$@")

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
  $SUDO apt-get update -q >&2
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
