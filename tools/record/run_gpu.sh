#!/usr/bin/env bash
# The whole GPU procedure, end to end on one GPU, from the repository root:
#
#   bash tools/record/prepare_corpus.sh          # once, on a Debian machine (needs apt): the corpus
#   bash tools/record/run_gpu.sh [full|smoke|hidden] [PACK.tar.gz]
#
# 1. train_models.py: tokenizer, dense draft, Mixtral-like "mix" and fine-grained "fg" targets
#    (tools/record/work/models/);
# 2. per target: record prefill traces with hidden states on training passages, train the
#    mlp_stride2 predictor on them (train_predictor.py);
# 3. per target and domain: record plain decoding and speculative decoding with gamma 2, 4, 8,
#    all channels, into traces/real/;
# 4. checks: format validation, SD output = greedy output, routing consistency on re-run,
#    five random-initialised MoE families through the recorder (arch-check); report.py tables.
# Each stage's seconds go to tools/record/work/timings.tsv. With PACK, everything but the model
# weights is packed into that tarball after every stage (so a run cut short still returns what
# it made). "smoke" runs every code path at a tiny size in about a minute.
# "hidden" trains the same models, then writes traces/real/hidden/: one speculative-decoding trace
# (gamma 4, prose) per target with every hidden state the predictors read (moe_input, layer_output,
# attn_input, draft_moe_input), the target's routers (--gates-out), the ProMoE MLP and the
# pre-attention linear predictor, so that `moesched-trace predict` can be checked against the
# channels the recorder computed (tests/predict). Kept small: one request.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/../.."
W=tools/record/work
if [ "${1:-}" = --pack-only ]; then  # used between jobs: pack what exists now
  pack="$2"; T="$3"
else
  size="${1:-full}"
  pack="${2:-}"
  T=traces/real
  [ "$size" = smoke ] && T=$W/smoke-traces
  [ "$size" = hidden ] && T=traces/real/hidden
fi
mkdir -p "$W" "$T"
export PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
PY="${PYTHON:-python3}"

do_pack() {
  [ -n "$pack" ] || return 0
  tar -czf "$pack.tmp" --exclude='*/models/*/model*.safetensors' --exclude='*/arch/*/model*.safetensors' \
    --exclude="$W/pred-*.safetensors" "$W" "$T" 2>/dev/null || true
  mv -f "$pack.tmp" "$pack"
}

if [ "${1:-}" = --pack-only ]; then do_pack; exit 0; fi
: > "$W/timings.tsv"

stage() {  # stage NAME command... : time it, pack; a failure stops the run
  local name="$1"; shift
  local t0 rc=0; t0=$(date +%s.%N)
  echo "=== $name: $*"
  "$@" || rc=$?
  awk -v n="$name" -v a="$t0" -v b="$(date +%s.%N)" -v rc="$rc" \
    'BEGIN { printf "%s\t%.1f\t%s\n", n, b - a, rc == 0 ? "ok" : "FAILED rc=" rc }' | tee -a "$W/timings.tsv"
  do_pack
  [ "$rc" = 0 ] || [ -n "${NONFATAL:-}" ] || exit "$rc"
}
check() { NONFATAL=1 stage "$@"; }  # a failed check is recorded and the run goes on

if [ "$size" = smoke ]; then
  train=(--draft-steps 40 --target-steps 30 --prompts 2 --predictor-passages 12 --val-windows 8)
  rec=(--max-requests 1 --max-new-tokens 24)
  pred=(--steps 50)
  gammas="4"
else
  train=(--draft-steps "${DRAFT_STEPS:-1000}" --target-steps "${TARGET_STEPS:-500}")
  rec=(--max-requests 4 --max-new-tokens 128)
  pred=(--steps 800)
  gammas="2 4 8"
fi

$PY - <<'EOF'
import torch, transformers, tokenizers, numpy
print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__,
      "numpy", numpy.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

if [ "${REUSE_MODELS:-0}" = 1 ] && [ -f "$W/models/fg/config.json" ] && [ -f "$W/models/predictor-train.jsonl" ]; then
  echo "=== train: skipped (REUSE_MODELS=1 and $W/models holds a trained pair)"
else
  stage train "$PY" tools/record/train_models.py --corpus tools/record/corpus --out "$W/models" "${train[@]}"
fi
if [ "$size" = hidden ]; then
  check mock-models "$PY" tools/record/test_mock_models.py
  for kind in mix fg; do
    name="moesched-upcycled-$kind"
    stage "predictor-data-$kind" "$PY" tools/record/record.py --model "$W/models/$kind" \
      --prompts "$W/models/predictor-train.jsonl" --mode prefill --prompt-tokens 256 --hidden layer_output,attn_input \
      --channels skip_gate --model-name "$name" --dataset "training passages (predictor-train.jsonl)" \
      -o "$W/pred-$kind-train.trace.safetensors" --quiet
    stage "predictor-mlp-$kind" "$PY" tools/record/train_predictor.py --trace "$W/pred-$kind-train.trace.safetensors" \
      -o "$T/$kind.mlp.safetensors" --report "$T/$kind.mlp.json" --steps 800 --hidden-dim 256
    stage "predictor-linear-$kind" "$PY" tools/record/train_predictor.py --kind linear --hidden-dim 64 \
      --trace "$W/pred-$kind-train.trace.safetensors" -o "$T/$kind.linear.safetensors" --report "$T/$kind.linear.json" \
      --steps 800
    stage "record-$kind-prose-sd4-hidden" "$PY" tools/record/record.py --model "$W/models/$kind" \
      --prompts "$W/models/prompts-prose.jsonl" --mode sd --draft "$W/models/draft" --gamma 4 --prompt-tokens 32 \
      --max-requests 1 --max-new-tokens 80 --ignore-eos --hidden moe_input,layer_output,attn_input,draft_moe_input \
      --mlp-predictor "$T/$kind.mlp.safetensors" --linear-predictor "$T/$kind.linear.safetensors" \
      --gates-out "$T/$kind.gates.safetensors" --model-name "$name" \
      --dataset "held-out King James Bible chapters (Debian bible-kjv-text), prompts-prose.jsonl" \
      -o "$T/$kind-prose-sd4.trace.safetensors"
    check "validate-$kind" "$PY" tools/record/test_record.py validate "$T/$kind-prose-sd4.trace.safetensors"
  done
  do_pack
  echo "run_gpu.sh: done (hidden)"
  cat "$W/timings.tsv"
  exit 0
fi
cp "$W/models/prompts-code.jsonl" "$W/models/prompts-prose.jsonl" "$T/"
cp "$W/models/tokenizer/tokenizer.json" "$T/tokenizer.json"

declare -A DATASET=(
  [code]="held-out Python 3.11 standard-library files (Debian libpython3.11-stdlib), prompts-code.jsonl"
  [prose]="held-out King James Bible chapters (Debian bible-kjv-text), prompts-prose.jsonl")
# everything after training runs in one Python process (run_jobs.py): one job a line
jobs="$W/jobs.txt"
q() { printf '%q ' "$@"; }
{
  echo -e "check-arch\t$(q python3 tools/record/test_record.py arch-check --tokenizer "$W/models/tokenizer" --out "$W/arch")"
  for kind in mix fg; do
    name="moesched-upcycled-$kind"
    echo -e "predictor-data-$kind\t$(q python3 tools/record/record.py --model "$W/models/$kind" \
      --prompts "$W/models/predictor-train.jsonl" --mode prefill --prompt-tokens 256 --hidden layer_output \
      --channels skip_gate --model-name "$name" --dataset "training passages (predictor-train.jsonl)" \
      -o "$W/pred-$kind-train.trace.safetensors" --quiet)"
    echo -e "predictor-$kind\t$(q python3 tools/record/train_predictor.py --trace "$W/pred-$kind-train.trace.safetensors" \
      -o "$W/pred-$kind.safetensors" --report "$W/pred-$kind.json" "${pred[@]}")"
    for dom in code prose; do
      echo -e "record-$kind-$dom-plain\t$(q python3 tools/record/record.py --model "$W/models/$kind" \
        --prompts "$T/prompts-$dom.jsonl" --mode decode --prompt-tokens 64 "${rec[@]}" --ignore-eos \
        --mlp-predictor "$W/pred-$kind.safetensors" --model-name "$name" --dataset "${DATASET[$dom]}" \
        -o "$T/$kind-$dom-plain.trace.safetensors")"
      for g in $gammas; do
        echo -e "record-$kind-$dom-sd$g\t$(q python3 tools/record/record.py --model "$W/models/$kind" \
          --prompts "$T/prompts-$dom.jsonl" --mode sd --draft "$W/models/draft" --gamma "$g" --prompt-tokens 64 \
          "${rec[@]}" --ignore-eos --mlp-predictor "$W/pred-$kind.safetensors" --model-name "$name" \
          --dataset "${DATASET[$dom]}" -o "$T/$kind-$dom-sd$g.trace.safetensors")"
      done
    done
  done
  all_traces=$(for kind in mix fg; do for dom in code prose; do for m in plain $(for g in $gammas; do echo sd$g; done); do
      printf '%s ' "$T/$kind-$dom-$m.trace.safetensors"; done; done; done)
  echo -e "check-validate\t$(q python3 tools/record/test_record.py validate) $all_traces"
  for kind in mix fg; do for dom in code prose; do for g in $gammas; do
    echo -e "check-same-output-$kind-$dom-sd$g\t$(q python3 tools/record/test_record.py same-output \
      "$T/$kind-$dom-plain.trace.safetensors" "$T/$kind-$dom-sd$g.trace.safetensors")"
  done; done; done
  for kind in mix fg; do
    echo -e "check-consistency-$kind\t$(q python3 tools/record/test_record.py consistency --model "$W/models/$kind" \
      --json "$W/consistency-$kind.json") $(for dom in code prose; do for m in plain $(for g in $gammas; do echo sd$g; done); do
        printf -- '--trace %s ' "$T/$kind-$dom-$m.trace.safetensors"; done; done)"
  done
  echo -e "check-report\t$(q python3 tools/record/report.py --json "$W/report.json" --markdown "$W/report.md") $all_traces"
} > "$jobs"
after=""
[ -n "$pack" ] && after="bash $(printf '%q' "$self") --pack-only $(printf '%q' "$pack") $(printf '%q' "$T")"
rc=0
"$PY" tools/record/run_jobs.py "$jobs" --timings "$W/timings.tsv" ${after:+--after "$after"} || rc=$?
cp "$W/arch/arch_check.json" "$W/arch_check.json" 2>/dev/null || true
do_pack
echo "run_gpu.sh: done (jobs rc=$rc)"
cat "$W/timings.tsv"
exit "$rc"
