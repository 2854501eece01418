#!/usr/bin/env bash
# Download the two Debian packages the training text comes from and build the corpus in
# tools/record/corpus/ (git-ignored; run_gpu.sh reads it). Debian 12, as root or with sudo
# (installs bible-kjv, whose `bible` program decodes the KJV text).
#
#   bash tools/record/prepare_corpus.sh            # -> tools/record/corpus/{prose,code}.jsonl.xz, manifest.json
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/corpus}"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if ! command -v bible >/dev/null; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq bible-kjv >/dev/null
fi
debs="$(mktemp -d)"
trap 'rm -rf "$debs"' EXIT
# apt-get download writes into the current folder; the _apt user may not be able to write to
# a mktemp folder, which only makes apt warn ("unsandboxed")
(cd "$debs" && apt-get download bible-kjv-text libpython3.11-stdlib 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
ls "$debs"/*.deb >/dev/null
python3 "$here/prepare_corpus.py" --debs "$debs" -o "$out"
