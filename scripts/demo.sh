#!/usr/bin/env bash
# The main job: build moesched-sizing (and moesched-trace) and run moesched-sizing on the shipped presets (every model on every
# GPU). Arguments are passed to the tool, e.g.  bash scripts/demo.sh --gpu rtx4090 --dtype int4
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
build=build/demo
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOESCHED_BUILD_TESTS=OFF \
  -DMOESCHED_BUILD_BENCH=OFF -DMOESCHED_BUILD_EXAMPLES=OFF -DMOESCHED_ENABLE_CUDA=OFF >/dev/null
cmake --build "$build" --target moesched-sizing moesched-trace -j "$(nproc)" >/dev/null
exec "$build/sim/moesched-sizing" "$@"
