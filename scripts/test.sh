#!/usr/bin/env bash
# The whole test suite: a warnings-as-errors build (MOESCHED_WERROR=ON) (CUDA code compiled too when nvcc is found)
# with every CPU test, then the same tests under AddressSanitizer + UndefinedBehaviorSanitizer,
# and the tests that run real threads (the host backend, the layer driver) under ThreadSanitizer,
# and one plain Release build with default options, as a CMake user builds (-Werror off; GCC 12
# at -O3 still must compile it).
# Then the libFuzzer targets (clang) each try a fixed number of inputs from a fixed seed
# (deterministic: MOESCHED_FUZZ_RUNS, default 250000); MOESCHED_FUZZ_SECONDS=N explores for N
# seconds with a random seed instead.
# GPU tests (ctest label 'gpu') need a GPU and are skipped unless MOESCHED_GPU_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh clang libclang-rt-14-dev
jobs=$(nproc)
exclude='gpu'
[ "${MOESCHED_GPU_TESTS:-0}" = 1 ] && exclude='^$'

echo "== build and test (RelWithDebInfo, -Werror)"
cmake -S . -B build/test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOESCHED_WERROR=ON >/dev/null
cmake --build build/test -j "$jobs"
ctest --test-dir build/test -LE "$exclude" --output-on-failure -j "$jobs"

echo "== a plain user build: Release, default options, default generator (warnings are not errors here)"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j "$jobs"
build/release/sim/moesched-sim compare --trace traces/real/mix-prose-sd4.trace.safetensors --policies lru,oracle >/dev/null

echo "== build under AddressSanitizer + UndefinedBehaviorSanitizer (tests run last)"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOESCHED_ENABLE_CUDA=OFF \
  -DMOESCHED_BUILD_BENCH=OFF -DMOESCHED_WERROR=ON -DMOESCHED_SANITIZE=address,undefined >/dev/null
cmake --build build/asan -j "$jobs"

echo "== the threaded backend and the driver under ThreadSanitizer"
cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOESCHED_ENABLE_CUDA=OFF -DMOESCHED_BUILD_BENCH=OFF \
  -DMOESCHED_BUILD_TOOLS=OFF -DMOESCHED_BUILD_EXAMPLES=OFF -DMOESCHED_WERROR=ON -DMOESCHED_SANITIZE=thread >/dev/null
cmake --build build/tsan -j "$jobs" --target test_host test_runtime
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 ctest --test-dir build/tsan -L 'host|runtime' --output-on-failure

echo "== fuzz the trace reader and the importer (clang, libFuzzer + ASan + UBSan)"
CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOESCHED_FUZZ=ON -DMOESCHED_WERROR=ON \
  -DMOESCHED_FUZZ_RUNS="${MOESCHED_FUZZ_RUNS:-250000}" -DMOESCHED_FUZZ_SECONDS="${MOESCHED_FUZZ_SECONDS:-0}" -DMOESCHED_ENABLE_CUDA=OFF -DMOESCHED_BUILD_BENCH=OFF \
  -DMOESCHED_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/fuzz -j "$jobs" --target fuzz_trace_reader fuzz_trace_import
ctest --test-dir build/fuzz -L fuzz --output-on-failure

echo "== the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan -LE "$exclude|packaging|fuzz" --output-on-failure -j "$jobs"
