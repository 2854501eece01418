#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call (device time is scarce):
#   1. configure and build with that machine's toolchain (CMake 4, g++ 13, nvcc 13, Catch2 v3),
#   2. run the whole ctest suite there, GPU tests included (this also checks Catch2 v3 builds),
#   3. the simulator's replay speed before and after a change on the idle 16-core host
#      (bench/gpu/bench_ab.sh; needs BEFORE=<source tree of the earlier commit>, skipped without),
#   4. the CUDA backend's checks and moesched-replay runs (tools/cuda/run_gpu_checks.sh),
#   5. (FIDELITY=1, the default) bench/gpu/fidelity.sh: profile -> replay -> simulate for three model
#      shapes; bench/results/fidelity.csv and copy.csv, the relative-error table in the summary,
#   6. (LINK_PROFILE=1) measure the host<->GPU copy curve and write it as a GPU preset.
# Usage (on the GPU machine, from the repository root): OUT=dir [BEFORE=.bench-before] bash bench/gpu/run_all.sh
# CTEST=0 skips ctest; FIDELITY_MODELS="moesched-upcycled-mix" runs fidelity.sh for those models only;
# RACECHECK=1 runs compute-sanitizer racecheck on the backend's GPU tests after fidelity (limit
# RACECHECK_S seconds; also in QUICK mode).
# QUICK=1 builds only the CUDA tools and tests and runs only the gpu label (a device call's first
# check of CUDA work). Results go to $OUT (or ./gpu-out when OUT is unset); at most 8 files come
# back from the device, so at the end everything but summary.txt, replays.json, fidelity.csv,
# copy.csv and fidelity.txt is packed into more.tar.gz.
# SPIN_AB=1 replays the mix model with every expert resident (lru, 0.5 GB) under --wait-spin-us 0 and 50,
# alternating, 3 rounds each, before fidelity (the driver thread's spin before it blocks; summary.txt).
# BUDGET_S (seconds, optional): fidelity.sh starts no new run after this many seconds from the
# script's start (a device call's limit then cuts the run list short and the packing still happens).
set -uo pipefail
start_s=$(date +%s)
out=${OUT:-gpu-out}
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv;
  nvcc --version | tail -1; cmake --version | head -1; g++ --version | head -1; } >> "$out/summary.txt" 2>&1

log "configure + build"
t0=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
if [ "${QUICK:-0}" = 1 ]; then
  cmake --build build/gpu -j "$(nproc)" --target moesched-replay moesched-profile moesched-sim test_cuda_backend \
    test_cuda_profile_tool test_cuda_link_profiler -- -k 0 >> "$out/build.log" 2>&1 ||
    grep -E "error|Error" "$out/build.log" | head -40 | tee -a "$out/summary.txt"
else
  cmake --build build/gpu -j "$(nproc)" -- -k 0 >> "$out/build.log" 2>&1 || grep -E "error|Error" "$out/build.log" | head -40 | tee -a "$out/summary.txt"
fi
log "built in $(( $(date +%s) - t0 )) s"

if [ "${CTEST:-1}" = 0 ]; then
  log "ctest skipped (CTEST=0)"
elif [ "${QUICK:-0}" = 1 ]; then
  log "ctest (gpu label only: QUICK=1)"
  ctest --test-dir build/gpu --output-on-failure -L gpu > "$out/ctest.log" 2>&1
else
  log "ctest (all labels, GPU included${CTEST_EXCLUDE:+, excluding $CTEST_EXCLUDE})"
  ctest --test-dir build/gpu --output-on-failure -j 8 ${CTEST_EXCLUDE:+-LE "$CTEST_EXCLUDE"} > "$out/ctest.log" 2>&1
fi
[ -f "$out/ctest.log" ] && grep -E "tests passed|Failed|\*\*\*|Not Run" "$out/ctest.log" | tee -a "$out/summary.txt"

if [ -n "${BEFORE:-}" ] && [ -d "$BEFORE" ]; then
  log "replay speed before/after (bench_sim, pinned to one core)"
  OUT="$out/ab" BEFORE="$BEFORE" ROUNDS="${ROUNDS:-3}" bash bench/gpu/bench_ab.sh > /dev/null 2>&1 || log "bench_ab failed"
  cat "$out/ab/bench_ab.txt" >> "$out/summary.txt" 2>/dev/null
  cp "$out/ab/bench_ab.txt" "$out/bench_ab.txt" 2>/dev/null
  rm -rf "$out/ab"
fi

if [ "${QUICK:-0}" != 1 ]; then
  log "CUDA backend checks and replays"
  OUT="$out/cuda" BUILD=build/gpu bash tools/cuda/run_gpu_checks.sh > /dev/null 2>&1
  cat "$out/cuda/summary.txt" >> "$out/summary.txt" 2>/dev/null
  cp "$out/cuda/replays.json" "$out/replays.json" 2>/dev/null
  cp "$out/cuda/ctest.log" "$out/ctest_gpu.log" 2>/dev/null
  cp "$out/cuda/sanitizer.log" "$out/sanitizer.log" 2>/dev/null
  rm -rf "$out/cuda"
fi

if [ "${SPIN_AB:-0}" = 1 ]; then
  log "wait spin A/B: mix-prose-plain, lru 0.5 GB (every expert resident), --max-requests 4; TPOT ms, notify us"
  for round in 1 2 3; do
    for spin in 0 50; do
      j="$out/spin-$spin-$round.json"
      build/gpu/tools/cuda/moesched-replay --trace traces/real/mix-prose-plain.trace.safetensors --model moesched-upcycled-mix \
        --gpu h200 --policy lru --cache-gb 0.5 --max-requests 4 --wait-spin-us "$spin" --json "$j" > /dev/null 2>&1 &&
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["records"][0]; d=r["driver_thread"]; t=r["tpot_ms"]["mean"]; n=d["notify_ns"]/1e3; print("round %s spin %2s us: TPOT %.4f ms, notify %.2f us over %d waits" % (sys.argv[2], sys.argv[3], t, n, d["waited"]))' \
          "$j" "$round" "$spin" | tee -a "$out/summary.txt" || log "spin $spin round $round failed"
    done
  done
fi

if [ "${FIDELITY:-1}" = 1 ]; then
  log "fidelity (bench/gpu/fidelity.sh)"
  deadline=""; [ -n "${BUDGET_S:-}" ] && deadline=$((start_s + BUDGET_S))
  OUT="$out/fid" BUILD=build/gpu DEADLINE="$deadline" bash bench/gpu/fidelity.sh > "$out/fidelity.log" 2>&1 || log "fidelity.sh failed"
  cat "$out/fid/fidelity.txt" >> "$out/summary.txt" 2>/dev/null
  for f in fidelity.csv copy.csv torch_peer.csv fidelity.txt fidelity.tar.gz; do cp "$out/fid/$f" "$out/$f" 2>/dev/null; done
  rm -rf "$out/fid"
fi

if [ "${RACECHECK:-0}" = 1 ] && [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  # The test program prints one line per check; stdbuf keeps its output line-buffered, so a run that
  # ends abnormally under the sanitizer still shows the last check it passed.
  # The groups with the backend's own kernels (the checksum kernel is its one shared-memory user);
  # the driver runs' cuBLAS kernels are NVIDIA's and take racecheck past any time limit.
  log "compute-sanitizer racecheck of the CUDA backend's tests, groups direct failure copy_submit graphs (RACECHECK=1)"
  timeout "${RACECHECK_S:-300}" stdbuf -oL -eL /usr/local/cuda/bin/compute-sanitizer --tool racecheck --error-exitcode 9 \
    build/gpu/tests/test_cuda_backend direct failure copy_submit graphs > "$out/racecheck.log" 2>&1
  log "racecheck rc=$? after $(grep -c '^ok' "$out/racecheck.log") passed checks; last: $(grep -E '^(ok|FAIL)' "$out/racecheck.log" | tail -1)"
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|failure\(s\)|^FAIL" "$out/racecheck.log" | tail -5 | tee -a "$out/summary.txt"
fi

if [ "${LINK_PROFILE:-0}" = 1 ]; then
  log "link profile"
  build/gpu/tools/moesched-profile-link --like h200 --name h200-measured --max-mib 1024 \
    --repeats 30 --json "$out/link_samples.json" -o "$out/h200-measured.json" >> "$out/summary.txt" 2>&1
fi
log "done"
# At most 8 files come back: pack everything but the main results.
(cd "$out" && ls -A | grep -vxE 'summary.txt|replays.json|fidelity.csv|copy.csv|torch_peer.csv|fidelity.txt|more.tar.gz' |
  tar -czf more.tar.gz -T - --remove-files 2>/dev/null) || true
