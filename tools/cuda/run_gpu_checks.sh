#!/usr/bin/env bash
# The CUDA backend's checks on the GPU machine, in one command: build (Release, sm_90), the gpu
# tests (ctest -L gpu), the backend test under compute-sanitizer memcheck, and moesched-replay of a
# real trace under lru and on-demand (plus a verified run). Logs go to $OUT (at most 8 files).
#
#   OUT=/tmp/out bash tools/cuda/run_gpu_checks.sh
set -u
OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD:-build/gpu}
JOBS=${JOBS:-$(nproc)}
TRACE=traces/real/mix-prose-sd4.trace.safetensors
CACHE_GB=${CACHE_GB:-0.1}
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME LOG CMD...: runs CMD, logs to LOG, records rc and seconds
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  "$@" >>"$log" 2>&1
  local rc=$?
  note "$name: rc=$rc ($((SECONDS - t0)) s)"
  return $rc
}

note "date: $(date -u +%FT%TZ)"
note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
note "nvcc: $(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -1)"

step configure "$OUT/build.log" cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DMOESCHED_BUILD_BENCH=OFF -DMOESCHED_BUILD_EXAMPLES=OFF || { cat "$summary"; exit 1; }
step build "$OUT/build.log" cmake --build "$BUILD" -j "$JOBS" --target test_cuda_backend test_cuda_link_profiler test_cuda_profile_tool moesched-profile \
  moesched-replay moesched_header_check_cuda || { tail -40 "$OUT/build.log"; cat "$summary"; exit 1; }

step ctest-gpu "$OUT/ctest.log" ctest --test-dir "$BUILD" -L gpu -V --timeout 300
grep -cE "^[0-9]+: ok  " "$OUT/ctest.log" | sed 's/^/checks ok: /' | tee -a "$summary"
grep -E "^[0-9]+: FAIL" "$OUT/ctest.log" | head -20 | tee -a "$summary"

SAN=/usr/local/cuda/bin/compute-sanitizer
if [ -x "$SAN" ]; then
  step memcheck "$OUT/sanitizer.log" timeout 180 "$SAN" --tool memcheck --leak-check full --error-exitcode 9 \
    "$BUILD/tests/test_cuda_backend"
  grep -E "ERROR SUMMARY|LEAK SUMMARY" "$OUT/sanitizer.log" | tail -3 | tee -a "$summary"
  # racecheck: shared-memory hazards in the project's own kernels (checksums, fills, SiLU x up):
  # the groups that run them; the driver runs' many cuBLAS kernels take racecheck past the limit
  step racecheck "$OUT/sanitizer.log" timeout 300 "$SAN" --tool racecheck --error-exitcode 9 \
    "$BUILD/tests/test_cuda_backend" direct failure copy_submit graphs
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/sanitizer.log" | tail -2 | tee -a "$summary"
fi

REPLAY="$BUILD/tools/cuda/moesched-replay"
J="$OUT/json"
mkdir -p "$J"
# The published policies run on the GPU through the same registry as in the simulator.
for p in lru on-demand spmoe moesched promoe; do
  step "replay mix $p" "$OUT/replay.log" "$REPLAY" --trace "$TRACE" --policy "$p" --cache-gb "$CACHE_GB" --json "$J/mix-$p.json"
done
step "replay mix lru --verify" "$OUT/replay.log" "$REPLAY" --trace "$TRACE" --policy lru --cache-gb "$CACHE_GB" --verify
step "replay mix moesched --verify" "$OUT/replay.log" "$REPLAY" --trace "$TRACE" --policy moesched --cache-gb "$CACHE_GB" --verify
# Real model shapes: Mixtral-8x7B (352 MB experts; 64 host experts aliased: 90 GB would not fit
# beside the rest) and Qwen3-30B-A3B (many small experts), one request each.
MIX=traces/synthetic/mixtral-sd4.trace.safetensors
QWEN=traces/synthetic/qwen3-plain.trace.safetensors
for p in lru prefetch:synthetic_skip_gate; do
  step "replay mixtral $p" "$OUT/replay.log" timeout 90 "$REPLAY" --trace "$MIX" --policy "$p" --cache-gb 40 \
    --max-requests 1 --host-experts 64 --json "$J/mixtral-${p%%:*}.json"
done
step "replay qwen3 on-demand" "$OUT/replay.log" timeout 90 "$REPLAY" --trace "$QWEN" --policy on-demand --cache-gb 2 \
  --max-requests 1 --host-experts 512 --json "$J/qwen3-on-demand.json"
python3 - "$J" "$OUT/replays.json" >>"$summary" 2>&1 <<'PY' || true
import json, sys, os, glob
docs = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    name = os.path.basename(f)[:-5]
    d = json.load(open(f)); docs[name] = d
    r = d["records"][0]
    print(f"{name}: real tpot {r['tpot_ms']['mean']:.3f} ms, sim {r['sim_tpot_ms']:.3f} ms, hits {r['cache_hits']}, "
          f"misses {r['misses']}, copied {r['experts_copied']}, GB {r['bytes_copied']/1e9:.2f}, "
          f"link busy {r['link_busy_share']:.2f}, stall/tok {r['stall_ms_per_token']:.3f} ms")
json.dump(docs, open(sys.argv[2], "w"), indent=1)
PY
rm -rf "$J"
cat "$summary"
