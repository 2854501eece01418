#!/usr/bin/env bash
# Fidelity of the simulator against the GPU, in one command on the GPU machine (issue 11, item 4):
# for each model shape, moesched-profile measures the GPU (profile JSON + the executor's copy
# throughput beside plain copies), then moesched-replay replays traces on the GPU under on-demand,
# lru and a prefetching policy, plain and SD, at a budget where experts miss, plus runs where every
# expert misses; each replay also runs the simulator on the same scenario (sim_tpot_ms), under the
# measured profile when the scenario options have --profile (else the roofline presets).
#
#   BUILD=build/gpu OUT=/tmp/out bash bench/gpu/fidelity.sh
#   PROFILE_ARGS="--cold-l2 true" ...      # extra moesched-profile options (run_all.sh passes it on)
#
# The profiles carry the executor's host costs (submit, launch, notify, handle, copy launch);
# fidelity.txt also shows the real run's driver-thread time per completion, and
# the simulator under the same profile without them (moesched-sim, column "sim no host"), so the
# table says what modelling the host buys.
#
# Writes bench/results/fidelity.csv (model,policy,gamma,cache_gb,real_tpot_ms,sim_tpot_ms) and
# bench/results/copy.csv (bytes,plain_gbps,executor_gbps) and bench/results/torch_peer.csv
# (model,trace,policy,cache_gb,executor_tpot_ms,torch_tpot_ms: the eager PyTorch peer of the same
# runs), copies them to $OUT with
# fidelity.txt (the relative-error table) and fidelity.tar.gz (profiles, replay JSON, log).
# Needs moesched-profile and moesched-replay built in $BUILD (bench/gpu/run_all.sh builds them), and
# moesched-sim for the "sim no host" column (skipped without it).
set -uo pipefail
BUILD=${BUILD:-build/gpu}
OUT=${OUT:-fidelity-out}
RESULTS=${RESULTS:-bench/results}
PROFILE="$BUILD/tools/cuda/moesched-profile"
REPLAY="$BUILD/tools/cuda/moesched-replay"
SIM="$BUILD/sim/moesched-sim"
mkdir -p "$OUT" "$RESULTS"
W=$(mktemp -d "${TMPDIR:-/tmp}/fidelity.XXXXXX")
LOG="$W/fidelity.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG" >&2; }
# DEADLINE (seconds since the epoch, optional): no new profile, replay or peer run starts after it,
# so a device call's time limit cuts the run list short instead of losing every result.
late() {
  [ -n "${DEADLINE:-}" ] && [ "$(date +%s)" -ge "$DEADLINE" ] && { say "skipped (past DEADLINE): $*"; return 0; }
  return 1
}
for b in "$PROFILE" "$REPLAY"; do [ -x "$b" ] || { say "missing $b (build it first)"; exit 1; }; done

if grep -q '"--profile"' sim/src/sim_commands.hpp; then
  USE_PROFILE=1
  say "sim column: the simulator under the measured profile (--profile)"
else
  USE_PROFILE=0
  say "sim column: roofline presets (this tree's scenario options have no --profile)"
fi

# model | trace | gamma | policies | cache GB where experts miss | scenario extras (replay and sim) | replay-only extras
# (gamma is the trace's SD window: sd4 = 4, plain = 0; every-miss runs use the smallest budget,
# one layer's union, under on-demand, and for the mix model also under oracle-aggressive, which
# copies ahead so the link never waits for a gate: its TPOT against the larger of link and compute
# time is the executor's overlap check; the mix model at 0.5 GB holds every expert: no misses)
RUNS=(
  "moesched-upcycled-mix|traces/real/mix-prose-plain.trace.safetensors|0|on-demand lru prefetch:skip_gate|0.2|--max-requests 4|"
  "moesched-upcycled-mix|traces/real/mix-prose-sd4.trace.safetensors|4|on-demand lru prefetch:skip_gate prefetch:draft_gate spmoe moesched|0.2|--max-requests 4|"
  "moesched-upcycled-mix|traces/real/mix-prose-sd4.trace.safetensors|4|on-demand|0.06|--max-requests 4|"
  "moesched-upcycled-mix|traces/real/mix-prose-plain.trace.safetensors|0|on-demand oracle-aggressive|0.06|--max-requests 4|"
  "moesched-upcycled-mix|traces/real/mix-prose-plain.trace.safetensors|0|lru|0.5|--max-requests 4|"
  "qwen3-30b-a3b|traces/synthetic/qwen3-plain.trace.safetensors|0|on-demand lru prefetch:synthetic_skip_gate|16|--max-requests 1|--host-experts 512"
  "qwen3-30b-a3b|traces/synthetic/qwen3-plain.trace.safetensors|0|on-demand|0.98|--max-requests 1|--host-experts 512"
  "mixtral-8x7b|traces/synthetic/mixtral-sd4.trace.safetensors|4|on-demand lru prefetch:synthetic_skip_gate|80|--max-requests 1|--host-experts 64"
)
MODELS=(moesched-upcycled-mix qwen3-30b-a3b mixtral-8x7b)
# FIDELITY_MODELS="m1 m2" keeps only those models' runs (a short device call).
if [ -n "${FIDELITY_MODELS:-}" ]; then
  keep() { local m; for m in $FIDELITY_MODELS; do [ "$m" = "$1" ] && return 0; done; return 1; }
  sel=(); for r in "${RUNS[@]}"; do keep "${r%%|*}" && sel+=("$r"); done; RUNS=("${sel[@]}")
  sel=(); for m in "${MODELS[@]}"; do keep "$m" && sel+=("$m"); done; MODELS=("${sel[@]}")
  say "models: ${MODELS[*]} (FIDELITY_MODELS)"
fi
# An H100 (80 GB) cannot hold 80 GB of Mixtral slots beside the rest: half there.
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ -n "$gpu_mib" ] && [ "$gpu_mib" -lt 100000 ]; then
  RUNS=("${RUNS[@]/%|80|--max-requests 1|--host-experts 64/|40|--max-requests 1|--host-experts 64}")
  say "GPU memory ${gpu_mib} MiB: the Mixtral runs use 40 GB of slots"
fi
# The eager PyTorch peer (bench/gpu/torch_peer.py) beside the executor: trace | model | cache GB |
# peer policies | extras. `resident` is compared with the executor's lru run at the same budget
# (every expert fits there).
PEER_ALL=(
  "traces/real/mix-prose-plain.trace.safetensors|moesched-upcycled-mix|0.2|on-demand,lru|--max-requests 4"
  "traces/real/mix-prose-sd4.trace.safetensors|moesched-upcycled-mix|0.2|on-demand,lru|--max-requests 4"
  "traces/real/mix-prose-plain.trace.safetensors|moesched-upcycled-mix|0.5|resident|--max-requests 4"
  "traces/synthetic/qwen3-plain.trace.safetensors|qwen3-30b-a3b|16|on-demand,lru|--max-requests 1 --host-experts 512"
)
PEER_RUNS=()
for r in "${PEER_ALL[@]}"; do
  IFS='|' read -r _ pm _ <<<"$r"
  for m in "${MODELS[@]}"; do [ "$m" = "$pm" ] && PEER_RUNS+=("$r"); done
done

t0=$SECONDS
for m in "${MODELS[@]}"; do
  late "profile $m" && continue
  say "== profile $m"
  # shellcheck disable=SC2086
  if ! timeout 180 "$PROFILE" --model "$m" --repeats "${REPEATS:-15}" -o "$W/$m.profile.json" \
      --copy-csv "$W/$m.copy.csv" ${PROFILE_ARGS:-} >>"$LOG" 2>&1; then
    say "profile $m failed (see the log)"
  fi
done
say "profiles done ($((SECONDS - t0)) s)"
# The same profiles without the host costs (for the "sim no host" column).
for m in "${MODELS[@]}"; do
  [ -s "$W/$m.profile.json" ] && python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("host",None); json.dump(d,open(sys.argv[2],"w"),indent=1)' \
    "$W/$m.profile.json" "$W/$m.nohost.profile.json"
done
: >"$W/nohost.csv"
: >"$W/handle.csv"

echo "model,policy,gamma,cache_gb,real_tpot_ms,sim_tpot_ms" >"$W/fidelity.csv"
for run in "${RUNS[@]}"; do
  IFS='|' read -r model trace gamma policies cache extra rextra <<<"$run"
  prof=()
  if [ "$USE_PROFILE" = 1 ] && [ -s "$W/$model.profile.json" ]; then prof=(--profile "$W/$model.profile.json"); fi
  for p in $policies; do
    j="$W/$model-$(basename "$trace" .trace.safetensors)-${p//:/_}-$cache.json"
    late "replay $model $(basename "$trace") $p $cache GB" && continue
    t1=$SECONDS
    # shellcheck disable=SC2086
    if timeout 240 "$REPLAY" --trace "$trace" --model "$model" --gpu h200 --policy "$p" --cache-gb "$cache" \
        "${prof[@]}" $extra $rextra --json "$j" >>"$LOG" 2>&1; then
      python3 - "$j" "$model" "$p" "$gamma" "$cache" >>"$W/fidelity.csv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["records"][0]
print(f"{sys.argv[2]},{sys.argv[3]},{sys.argv[4]},{sys.argv[5]},{r['tpot_ms']['mean']:.4f},{r['sim_tpot_ms']:.4f}")
PY
      say "replay $model $(basename "$trace") $p $cache GB: $(tail -1 "$W/fidelity.csv") ($((SECONDS - t1)) s)"
      # The driver thread's time per completion in this run (CudaBackend::HostStats), beside the
      # profile's handle_ns that the sim column charged.
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["records"][0].get("driver_thread",{}); print(r.get("handle_ns",float("nan")), r.get("notify_ns",float("nan")))' \
        "$j" >>"$W/handle.csv" 2>/dev/null || echo "nan nan" >>"$W/handle.csv"
      if [ -x "$SIM" ] && [ -s "$W/$model.nohost.profile.json" ]; then
        # shellcheck disable=SC2086
        "$SIM" compare --trace "$trace" --model "$model" --gpu h200 --policies "$p" --cache-gb "$cache" --chunks 0 \
          --compute-ahead 8 --profile "$W/$model.nohost.profile.json" $extra --json "$j.nohost" >>"$LOG" 2>&1 &&
          python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["records"][0]["tpot_ms"]["mean"])' "$j.nohost" >>"$W/nohost.csv" ||
          echo nan >>"$W/nohost.csv"
      else
        echo nan >>"$W/nohost.csv"
      fi
    else
      rc=$?
      say "replay $model $(basename "$trace") $p $cache GB failed (rc $rc, see the log)"
    fi
  done
done

# The eager PyTorch peer on the same scenarios (torch on this machine's python3).
echo "model,trace,policy,cache_gb,executor_tpot_ms,torch_tpot_ms" >"$W/torch_peer.csv"
if python3 -c 'import torch, numpy; assert torch.cuda.is_available()' 2>>"$LOG"; then
  for run in "${PEER_RUNS[@]}"; do
    IFS='|' read -r trace model cache pols extra <<<"$run"
    pj="$W/peer-$model-$(basename "$trace" .trace.safetensors)-$cache.json"
    late "torch peer $model $(basename "$trace") $cache GB" && continue
    t1=$SECONDS
    # shellcheck disable=SC2086
    if timeout 300 python3 bench/gpu/torch_peer.py --trace "$trace" --model "$model" --cache-gb "$cache" --policy "$pols" \
        $extra --json "$pj" >>"$LOG" 2>&1; then
      python3 - "$pj" "$W" "$model" "$trace" "$cache" >>"$W/torch_peer.csv" <<'PY'
import json, os, sys
peer = json.load(open(sys.argv[1]))
w, model, trace, cache = sys.argv[2:6]
base = os.path.basename(trace).replace(".trace.safetensors", "")
for r in peer["records"]:
    pol = r["policy"]
    ex = os.path.join(w, f"{model}-{base}-{'lru' if pol == 'resident' else pol}-{cache}.json")
    real = json.load(open(ex))["records"][0]["tpot_ms"]["mean"] if os.path.exists(ex) else float("nan")
    print(f"{model},{base},{pol},{cache},{real:.4f},{r['tpot_ms']['mean']:.4f}")
PY
      say "torch peer $model $(basename "$trace") $cache GB $pols ($((SECONDS - t1)) s)"
    else
      rc=$?
      say "torch peer $model $(basename "$trace") $cache GB failed (rc $rc, see the log)"
    fi
  done
else
  say "torch peer skipped: python3 has no torch with CUDA"
fi

# copy.csv: one row per model's expert size.
{
  echo "bytes,plain_gbps,executor_gbps"
  for m in "${MODELS[@]}"; do tail -n +2 "$W/$m.copy.csv" 2>/dev/null; done | sort -t, -k1,1n
} >"$W/copy.csv"

python3 - "$W/fidelity.csv" "$W/copy.csv" "$USE_PROFILE" "$W/nohost.csv" "$W/torch_peer.csv" "$W/handle.csv" "$W" >"$W/fidelity.txt" <<'PY'
import csv, json, math, os, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
nohost = [float(x) for x in open(sys.argv[4]).read().split()]
handle = [tuple(float(v) for v in line.split()) for line in open(sys.argv[6]) if line.strip()]
for m in sorted({r["model"] for r in rows}):
    pf = os.path.join(sys.argv[7], f"{m}.profile.json")
    if os.path.exists(pf):
        h = json.load(open(pf)).get("host", {})
        print(f"profile {m}: handle {h.get('handle_ns', 0) / 1e3:.2f} us per completion, notify {h.get('notify_ns', 0) / 1e3:.1f} us, "
              f"copy launch {h.get('copy_launch_ns', 0) / 1e3:.1f} us, launch {h.get('launch_ns', 0) / 1e3:.1f} us")
print("sim column:", "measured profile (--profile) with its host costs" if sys.argv[3] == "1" else "roofline presets (no --profile)")
print("sim no host: moesched-sim under the same profile without its host costs (nan: not run)")
print("handle/notify us: the real run's driver thread per completion and its wait-to-wake delay (moesched-replay's driver_thread)")
print(f"{'model':24} {'policy':26} {'gamma':>5} {'cache GB':>8} {'real ms':>9} {'sim ms':>9} {'rel err':>8} {'no host':>9} {'rel err':>8} {'handle':>7} {'notify':>7}")
errs, errs0 = [], []
for i, r in enumerate(rows):
    real, sim = float(r["real_tpot_ms"]), float(r["sim_tpot_ms"])
    s0 = nohost[i] if i < len(nohost) else float("nan")
    e = (sim - real) / real if real > 0 else float("nan")
    e0 = (s0 - real) / real if real > 0 else float("nan")
    errs.append(abs(e))
    if not math.isnan(e0):
        errs0.append(abs(e0))
    hd, nt = handle[i] if i < len(handle) else (float("nan"), float("nan"))
    print(f"{r['model']:24} {r['policy']:26} {r['gamma']:>5} {r['cache_gb']:>8} {real:9.3f} {sim:9.3f} {100 * e:+7.1f}% {s0:9.3f} {100 * e0:+7.1f}% {hd / 1e3:7.2f} {nt / 1e3:7.1f}")
if errs:
    print(f"|sim - real| / real over {len(errs)} runs: median {100 * statistics.median(errs):.1f}%, max {100 * max(errs):.1f}%")
if errs0:
    print(f"without host costs over {len(errs0)} runs: median {100 * statistics.median(errs0):.1f}%, max {100 * max(errs0):.1f}%")
print()
# The orders' device time inside each replay (CudaBackend::span_stats(): orders queued behind the
# one ahead, so the span is their kernels alone) against the profile's time for the same kind and
# tokens (dense at context 0: the replay's dense part runs no attention over a KV cache). A ratio
# above 1 means the kernels ran slower in the replay than the profile timed them (L2 contents,
# clocks, copies beside them): time the simulator cannot know.
print("device time per order in the replays (queued orders: kernels alone) against the profile, us:")
print(f"{'model':24} {'trace':18} {'policy':26} {'cache GB':>8} {'kind':>7} {'tok':>3} {'orders':>7} {'replay':>8} {'profile':>8} {'ratio':>6}")
for jf in sorted(f for f in os.listdir(sys.argv[7]) if f.endswith(".json") and not f.startswith("peer-") and not f.endswith(".profile.json")):
    try:
        d = json.load(open(os.path.join(sys.argv[7], jf)))
        sc, rec = d["scenario"], d["records"][0]
        prof = json.load(open(os.path.join(sys.argv[7], f"{sc['model']}.profile.json")))
    except (OSError, KeyError, IndexError, ValueError):
        continue
    table = {"expert": {e["tokens"]: e["ns"] for e in prof.get("expert_ffn", [])},
             "dense": {e["tokens"]: e["ns"] for e in prof.get("dense", []) if e.get("context", 0) == 0},
             "head": {e["tokens"]: e["ns"] for e in prof.get("head", [])}}
    for sp in rec.get("device_spans", []):
        want = table.get(sp["kind"], {}).get(sp["tokens"])
        if want is None or sp["queued"] < 20:
            continue
        got = sp["queued_mean_ns"]
        print(f"{sc['model']:24} {os.path.basename(sc['trace']).replace('.trace.safetensors', ''):18} {rec['policy']:26} "
              f"{sc['cache_gb']:8.3g} {sp['kind']:>7} {sp['tokens']:3d} {sp['queued']:7d} {got / 1e3:8.2f} {want / 1e3:8.2f} {got / want:6.2f}")
print()
print(f"{'copy bytes':>12} {'plain GB/s':>10} {'executor GB/s':>13} {'ratio':>6}")
for r in csv.DictReader(open(sys.argv[2])):
    pl, ex = float(r["plain_gbps"]), float(r["executor_gbps"])
    print(f"{int(r['bytes']):>12} {pl:10.2f} {ex:13.2f} {100 * ex / pl if pl else 0:5.1f}%")
print()
print("eager PyTorch peer (bench/gpu/torch_peer.py) beside the executor, TPOT ms:")
print(f"{'model':24} {'trace':18} {'policy':10} {'cache GB':>8} {'executor':>9} {'torch':>9} {'torch/exec':>10}")
for r in csv.DictReader(open(sys.argv[5])):
    ex, pt = float(r["executor_tpot_ms"]), float(r["torch_tpot_ms"])
    print(f"{r['model']:24} {r['trace']:18} {r['policy']:10} {r['cache_gb']:>8} {ex:9.3f} {pt:9.3f} {pt / ex if ex > 0 else float('nan'):10.2f}")
PY
cat "$W/fidelity.txt" | tee -a "$LOG"
cp "$W/fidelity.csv" "$RESULTS/fidelity.csv"
cp "$W/copy.csv" "$RESULTS/copy.csv"
cp "$W/torch_peer.csv" "$RESULTS/torch_peer.csv"
cp "$W/fidelity.csv" "$W/copy.csv" "$W/torch_peer.csv" "$W/fidelity.txt" "$OUT/"
say "fidelity done ($((SECONDS - t0)) s)"
tar -czf "$OUT/fidelity.tar.gz" -C "$W" . 2>/dev/null
rm -rf "$W"
