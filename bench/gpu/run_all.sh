#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call (device time is scarce):
#   1. configure and build with that machine's toolchain (CMake 4, g++ 13, nvcc 13, Catch2 v3),
#   2. run the whole ctest suite there, GPU tests included (this also checks Catch2 v3 builds),
#   3. measure the host<->GPU copy curve and write it as a GPU preset,
#   4. run the CPU benchmarks there too, for a second machine's numbers.
# Usage (on the GPU machine, from the repository root): bash bench/gpu/run_all.sh
# Results go to $OUT (or ./gpu-out when OUT is unset).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv;
  nvcc --version | tail -1; cmake --version | head -1; g++ --version | head -1; } | tee "$out/machine.txt"

log "configure + build"
t0=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build/gpu -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
log "built in $(( $(date +%s) - t0 )) s"

log "ctest (all labels, GPU included)"
ctest --test-dir build/gpu --output-on-failure -j 8 2>&1 | tee "$out/ctest.log" | grep -E "tests passed|Failed|\*\*\*" 

log "link profile"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$gpu" in
  *H200*) like=h200; name=h200-measured ;;
  *H100*PCIe*) like=h100-pcie; name=h100-pcie-measured ;;
  *H100*) like=h100-pcie; name=h100-measured ;;  # compute peaks then need checking: see notes
  *) like=h200; name=gpu-measured ;;
esac
build/gpu/tools/moesched-profile-link --like "$like" --name "$name" --max-mib 1024 \
  --repeats 30 --json "$out/link_samples.json" -o "$out/$name.json" 2>&1 | tee "$out/link.txt"
build/gpu/tools/moesched-sizing --gpu "$out/$name.json" \
  --model mixtral,deepseek-v2-lite,qwen3-30b-a3b 2>&1 | tee "$out/sizing_measured.txt" | tail -8

log "CPU benchmarks"
build/gpu/bench/bench_core --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/bench_core.json" --benchmark_out_format=json 2>&1 | grep median
build/gpu/bench/bench_trace --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/bench_trace.json" --benchmark_out_format=json 2>&1 | grep median
log "done"
