#!/usr/bin/env bash
# The main job: build the tools and compare every offloading policy, against the provable lower
# bound, on a shipped routing trace (the project's Mixtral-like target with speculative decoding,
# recorded on a GPU, replayed on a simulated RTX 4090).
# Arguments are passed to `moesched-sim compare` and override the defaults, e.g.
#   bash scripts/demo.sh --gpu rtx3090 --cache-gb 0.1 --policies lru,oracle,prefetch:draft_gate --json out.json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
build=build/demo
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOESCHED_BUILD_TESTS=OFF \
  -DMOESCHED_BUILD_BENCH=OFF -DMOESCHED_BUILD_EXAMPLES=OFF -DMOESCHED_ENABLE_CUDA=OFF >/dev/null
if ! cmake --build "$build" --target moesched-sim moesched-sizing moesched-trace -j "$(nproc)" >"$build/build.log" 2>&1; then
  cat "$build/build.log" >&2
  echo "demo.sh: the build failed (log above, also in $build/build.log)" >&2
  exit 1
fi
has_trace=0
has_cache=0
has_policies=0
for a in "$@"; do
  [[ "$a" == --trace || "$a" == --trace=* ]] && has_trace=1
  [[ "$a" == --cache-gb || "$a" == --cache-gb=* ]] && has_cache=1
  [[ "$a" == --policies || "$a" == --policies=* ]] && has_policies=1
done
defaults=(--gpu rtx4090)
# The baselines, the offline reference, the published policies and moesched's own (each published
# policy runs the paper's predictor from the trace's channels, or says which fallback ran).
[[ $has_policies == 1 ]] || defaults+=(--policies on-demand,lru,lfu,oracle,mixtral-offloading,moe-infinity,promoe,spmoe,moesched)
# Default data: SD (gamma 4) on the project's own Mixtral-like target, recorded with real draft
# predictions (traces/real/MODEL_CARD.md); a third of its experts fit the default cache.
if [[ $has_trace == 0 ]]; then
  defaults+=(--trace traces/real/mix-prose-sd4.trace.safetensors)
  [[ $has_cache == 1 ]] || defaults+=(--cache-gb 0.15)
fi
exec "$build/sim/moesched-sim" compare "${defaults[@]}" "$@"
