#!/usr/bin/env bash
# The whole test suite: a warnings-as-errors build (CUDA code compiled too when nvcc is found)
# with every CPU test, then the same tests under AddressSanitizer + UndefinedBehaviorSanitizer.
# GPU tests (ctest label 'gpu') need a GPU and are skipped unless MOESCHED_GPU_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
exclude='gpu'
[ "${MOESCHED_GPU_TESTS:-0}" = 1 ] && exclude='^$'

echo "== build and test (RelWithDebInfo, -Werror)"
cmake -S . -B build/test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/test -j "$jobs"
ctest --test-dir build/test -LE "$exclude" --output-on-failure -j "$jobs"

echo "== build and test under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOESCHED_ENABLE_CUDA=OFF \
  -DMOESCHED_BUILD_BENCH=OFF -DMOESCHED_SANITIZE=address,undefined >/dev/null
cmake --build build/asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan -LE "$exclude|packaging" --output-on-failure -j "$jobs"
