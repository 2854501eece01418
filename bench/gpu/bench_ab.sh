#!/usr/bin/env bash
# Replay throughput of the simulator before and after a change, on an idle machine (the GPU
# machine's 16-core host): builds bench_sim from the current tree and from BEFORE (a source tree of
# the earlier commit), then alternates the two binaries ROUNDS times and prints the medians of
# each benchmark's activations/s and their ratio. Usage:
#   BEFORE=.bench-before ROUNDS=3 OUT=dir bash bench/gpu/bench_ab.sh
set -euo pipefail
before=${BEFORE:-.bench-before}
rounds=${ROUNDS:-3}
out=${OUT:-bench-ab-out}
mkdir -p "$out"
build() {  # build SRC DIR
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOESCHED_BUILD_TESTS=OFF -DMOESCHED_BUILD_BENCH=ON \
    -DMOESCHED_ENABLE_CUDA=OFF -DMOESCHED_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$2" --target bench_sim -j "$(nproc)" >/dev/null
}
build "$before" build/ab-before &
build . build/ab-after &
wait
for r in $(seq "$rounds"); do
  for v in before after; do
    taskset -c 2 "build/ab-$v/bench/bench_sim" --benchmark_filter='Replay|Bare' --benchmark_repetitions=3 \
      --benchmark_report_aggregates_only=true --benchmark_format=json > "$out/$v-$r.json"
  done
done
python3 - "$out" "$rounds" <<'PY' | tee "$out/bench_ab.txt"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for r in range(1, rounds + 1):
    for v in ("before", "after"):
        for b in json.load(open(f"{out}/{v}-{r}.json"))["benchmarks"]:
            if b.get("aggregate_name") == "median":
                res.setdefault((b["run_name"], v), []).append(b["activations/s"])
print(f"{'benchmark':28} {'before M/s':>10} {'after M/s':>10} {'after/before':>12}")
for n in sorted({k[0] for k in res}):
    b = statistics.median(res[(n, "before")]) / 1e6
    a = statistics.median(res[(n, "after")]) / 1e6
    print(f"{n:28} {b:10.2f} {a:10.2f} {a / b:12.2f}")
PY
