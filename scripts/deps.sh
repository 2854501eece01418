#!/usr/bin/env bash
# Installs the Debian packages moesched needs that are missing (apt-get, as root or with sudo).
# Usage: bash scripts/deps.sh [extra-package ...]     MOESCHED_NO_INSTALL=1 skips installing.
set -euo pipefail

packages=(cmake g++ make ninja-build catch2 libfmt-dev libcli11-dev nlohmann-json3-dev
          libbenchmark-dev zlib1g-dev libeigen3-dev python3 python3-numpy python3-matplotlib "$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "${MOESCHED_NO_INSTALL:-0}" = 1 ]; then
  echo "deps: missing Debian packages (not installing, MOESCHED_NO_INSTALL=1): ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
