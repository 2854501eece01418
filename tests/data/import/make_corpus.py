#!/usr/bin/env python3
"""Write a corpus of messy routing dumps, the way real hooks and tracing scripts write them.

usage: make_corpus.py OUT_DIR

Python 3 standard library only, deterministic: the same script writes the same bytes on every
machine (own splitmix64 generator, gzip with mtime 0). Every dump is shaped like the preset
moesched-upcycled-mix (8 MoE layers, 8 experts, top-2), so the imported traces replay in
moesched-sim. Each dump NAME has an expected report tests/data/import/corpus/NAME.expected
(its first line: the import options); check_corpus.py imports, compares, validates, replays.
The routing is random (seeded), not recorded from any model.
"""
import gzip
import json
import os
import sys

LAYERS, EXPERTS, TOP_K = 8, 8, 2
MODEL = "moesched-upcycled-mix"
MASK = (1 << 64) - 1


class Rng:
    """splitmix64: fixed output for a seed, whatever the Python version."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n

    def topk(self):
        pool = list(range(EXPERTS))
        for i in range(TOP_K):
            j = i + self.below(EXPERTS - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:TOP_K]

    def weights(self):
        raw = sorted((1 + self.below(9) for _ in range(TOP_K)), reverse=True)
        total = sum(raw)
        return [round(r / total, 4) for r in raw]

    def shuffle(self, items):
        items = list(items)
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items


def lines(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def hf_token_layer_cut(rng):
    """Per (token, layer) JSONL from a Hugging Face forward hook; the engine stopped mid-step:
    the last token of prompt-001 has 3 of 8 layers, the last two of prompt-002 have 6 and 2, and
    the file ends inside a line."""
    out = []
    for rid, prompt, decode, cut in (("prompt-001", 4, 5, {8: 3}), ("prompt-002", 3, 6, {7: 6, 8: 2})):
        for t in range(prompt + decode):
            for layer in range(cut.get(t, LAYERS)):
                out.append({"request_id": rid, "token_idx": t, "layer": layer, "phase": "prefill" if t < prompt else "decode",
                            "experts": rng.topk(), "gating_probs": rng.weights()})
    return lines(out) + '{"request_id": "prompt-002", "token_idx": 8, "layer": 2, "pha'


def vllm_routes(rng):
    """One JSON document per request (pretty-printed): meta, prompt and generated token ids, and
    the per-token records under 'routes'; the last token was flushed with 5 of 8 layers."""
    prompt, generated = 6, 5
    routes = []
    for t in range(prompt + generated):
        layers = {}
        for layer in range(LAYERS if t < prompt + generated - 1 else 5):
            layers[str(layer)] = {"topk_ids": rng.topk(), "topk_weights": rng.weights()}
        routes.append({"token_idx": t, "phase": "prefill" if t < prompt else "decode", "layers": layers})
    doc = {"meta": {"model": MODEL, "num_experts": EXPERTS, "top_k": TOP_K, "engine": "vllm 0.6.3 routing hook"},
           "request_id": "chat-17", "sampling": {"temperature": 0.0, "max_tokens": generated},
           "prompt_token_ids": [101 + rng.below(3000) for _ in range(prompt)],
           "generated_token_ids": [101 + rng.below(3000) for _ in range(generated)],
           "routes": routes}
    return json.dumps(doc, indent=2) + "\n"


def int_layer_map(rng):
    """Per-token JSONL of a batched decoder: layer maps keyed "0".."7" in any order, the two
    sequences' records interleaved, no phase field; token 4 of sequence 0 lacks layer 6."""
    out = [{"meta": {"num_experts": EXPERTS, "top_k": TOP_K, "recorder": "batched-hook"}}]
    for t in range(7):
        for seq in (0, 1):
            keys = [k for k in rng.shuffle(range(LAYERS)) if not (seq == 0 and t == 4 and k == 6)]
            out.append({"seq_id": seq, "pos": t, "layers": {str(k): rng.topk() for k in keys}})
    return lines(out)


def module_names(rng):
    """Per-token JSONL keyed by the gates' module names (what named_modules() gives)."""
    out = []
    for t in range(6):
        out.append({"request_id": "r0", "token_idx": t, "phase": "prefill" if t < 3 else "decode",
                    "layers": {f"model.layers.{layer}.block_sparse_moe.gate": {"selected_experts": rng.topk(), "routing_weights": rng.weights()}
                               for layer in range(LAYERS)}})
    return lines(out)


def layer_entries(rng):
    """A JSON array of per-token records whose 'routing' lists entries holding their own layer id,
    shuffled; one null entry per token (a dense layer's slot)."""
    out = []
    for t in range(5):
        entries = [{"layer_id": layer, "expert_ids": rng.topk()} for layer in rng.shuffle(range(LAYERS))]
        entries.insert(rng.below(len(entries) + 1), None)
        out.append({"request": "mlx-0", "token_index": t, "stage": "prompt" if t < 2 else "decode", "routing": entries})
    return json.dumps(out) + "\n"


def phases(rng):
    """Speculative decoding with phases as the engine spells them (Prefill, Verify, SD_VERIFY,
    DECODE) and the draft model's own passes (phase 'draft'); 'step' counts every forward pass of
    either model; positions repeat across verify steps; the last verify step lost a layer of one
    token (the engine stopped)."""
    out = []
    fwd = [0]

    def tok(pos, phase, layers=LAYERS, **extra):
        rec = {"req_id": "sd-1", "step": fwd[0], "token_pos": pos, "phase": phase,
               "layers": {str(layer): {"experts": rng.topk(), "weights": rng.weights()} for layer in range(layers)}}
        rec.update(extra)
        out.append(rec)

    for pos in range(4):
        tok(pos, "Prefill")
    fwd[0] += 1
    pos = 4
    for phase, accepted in (("Verify", 2), ("SD_VERIFY", 0), ("Verify", 3)):
        for d in range(3):  # the draft model proposes 3 tokens, one forward pass each
            tok(pos + d, "draft")
            fwd[0] += 1
        tok(pos, phase, draft_len=3, accepted=accepted)
        for d in range(1, 4):
            tok(pos + d, phase)
        fwd[0] += 1
        pos += accepted + 1
    tok(pos, "DECODE")
    fwd[0] += 1
    pos += 1
    tok(pos, "Verify", draft_len=3, accepted=1)
    tok(pos + 1, "Verify")
    tok(pos + 2, "Verify", layers=4)
    tok(pos + 3, "Verify")
    return lines(out)


def token_pos(rng):
    """Per (token, layer) JSONL with a token index from 0 and absolute positions after a cached
    32-token system prompt; no phases (the prompt length comes from --prefill-tokens)."""
    out = []
    for t in range(7):
        for layer in range(LAYERS):
            out.append({"req_id": "chat-3", "token_idx": t, "token_pos": 32 + t, "layer": layer,
                        "topk_ids": rng.topk(), "topk_weights": rng.weights()})
    return lines(out)


def composite_key(rng):
    """Per-token JSONL of an evaluation run: problem ids restart in every data set, so a request
    is (dataset, problem_id); the last token of humaneval/1 has only 7 layers."""
    out = []
    for dataset in ("gsm8k", "humaneval"):
        for problem in (0, 1):
            for t in range(5):
                n = 7 if (dataset, problem, t) == ("humaneval", 1, 4) else LAYERS
                out.append({"dataset": dataset, "problem_id": problem, "token_idx": t, "phase": "prefill" if t < 2 else "decode",
                            "layers": {str(layer): rng.topk() for layer in range(n)}})
    return lines(out)


def llama_token_layer(rng):
    """llama.cpp eval-callback script, one CSV row per (token, layer), quoted request names with
    commas; token 3 of the first request lacks layer 5 (in the middle), the file ends inside a row."""
    rows = ["request,token,layer,expert_0,expert_1,weight_0,weight_1"]
    for rid, n in (("story, part 1", 7), ("story, part 2", 8)):
        for t in range(n):
            for layer in range(LAYERS):
                if rid == "story, part 1" and t == 3 and layer == 5:
                    continue
                if rid == "story, part 2" and t == 7 and layer >= 3:
                    continue
                e, w = rng.topk(), rng.weights()
                rows.append(f'"{rid}",{t},{layer},{e[0]},{e[1]},{w[0]},{w[1]}')
    return "\n".join(rows) + '\n"story, part 2",7,3,'


def llama_layer_columns(rng):
    """llama.cpp tracing script, one CSV row per token with one column per layer; top-k lists
    written as "1;7", "1|7" or [1, 7] (unquoted brackets); phases 'prompt' and 'gen'; the last
    token of sequence 1 has no routing for layers 6 and 7."""
    rows = ["seq_id,pos,phase," + ",".join(f"layer_{layer}" for layer in range(LAYERS))]
    styles = ("{};{}", "{}|{}", "[{}, {}]")
    for seq in (0, 1):
        for t in range(6):
            cells = []
            for layer in range(LAYERS):
                e = rng.topk()
                cells.append("" if (seq == 1 and t == 5 and layer >= 6) else styles[(t + layer) % 3].format(*e))
            rows.append(f"{seq},{t},{'prompt' if t < 2 else 'gen'}," + ",".join(cells))
    return "\n".join(rows) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    dumps = {}
    for seed, (name, make) in enumerate((
            ("hf_token_layer_cut.jsonl", hf_token_layer_cut), ("vllm_routes.json", vllm_routes),
            ("int_layer_map.jsonl", int_layer_map), ("module_names.jsonl", module_names),
            ("layer_entries.json", layer_entries), ("phases.jsonl", phases), ("token_pos.jsonl", token_pos),
            ("composite_key.jsonl", composite_key), ("llama_token_layer.csv", llama_token_layer),
            ("llama_layer_columns.csv", llama_layer_columns)), start=1):
        dumps[name] = make(Rng(2026 + seed)).encode("utf-8")
    dumps["vllm_routes.json.gz"] = gzip.compress(dumps["vllm_routes.json"], compresslevel=9, mtime=0)
    for name, data in sorted(dumps.items()):
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    with open(os.path.join(out_dir, "MANIFEST"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(n + "\n" for n in sorted(dumps)))
    print(f"wrote {len(dumps)} dumps to {out_dir}")


if __name__ == "__main__":
    main()
