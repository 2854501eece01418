#!/usr/bin/env python3
"""Record a moesched routing trace (traces/FORMAT.md) from a Hugging Face MoE model.

  python3 tools/record/record.py --model /path/to/Mixtral-8x7B --prompts prompts.jsonl \\
      --mode sd --draft /path/to/Mistral-7B --gamma 4 -o out.trace.safetensors

Runs every prompt at batch size 1 (greedy), one forward per step, and records for every token
the target ran, at every MoE layer, the experts its router chose and their gate weights, read
from the model's own experts call (so the recording is exactly what the model computed).

Modes (--mode):
  prefill  one step per prompt: the prompt (phase 0). With --hidden, this is how data for
           predictor training is collected (train_predictor.py).
  decode   prefill, then plain greedy decoding, one token per step (phase 1), until
           --max-new-tokens tokens are out (the prefill emits the first).
  sd       prefill, then speculative decoding: the --draft model proposes --gamma tokens
           greedily, the target verifies the last accepted token plus the gamma drafts in one
           step (phase 2, gamma + 1 tokens) and keeps the longest matching prefix plus its own
           next token; step_accepted records how many drafts matched. Output is identical to
           greedy decoding of the target (up to floating-point ties).

Prediction channels (--channels; each prediction lists --candidates experts, ranked):
  skip_gate    the router of MoE layer l+1 applied to MoE layer l's input (the hidden state
               after layer l's post-attention norm), for every token of the step.
               available_after = l: usable once MoE layer l has run.
  draft_gate   (sd only; SP-MoE) the target's router of MoE layer l applied to the draft's
               post-attention hidden state (the input of the draft's feed-forward) at the matching
               layer, for each verify-step token the draft has processed while drafting: token j
               = 0..gamma-1 (the last accepted token and the first gamma-1 drafts; the last draft
               is never fed to the draft). available_after = -1: known before the verify step.
               Needs equal hidden sizes; draft layer = target layer when depths match, else the
               proportional layer round(d * (Ld - 1) / (Lt - 1)).
  mlp_strideS  (with --mlp-predictor FILE from train_predictor.py; ProMoE) a 2-layer MLP per
               layer reads the output of the decoder layer of MoE layer l and scores MoE layer
               l+S's experts. available_after = l.
  preattn_linear (with --linear-predictor FILE from train_predictor.py --kind linear; after
               arXiv 2511.10676) two linear maps per layer read the input of the attention of MoE
               layer l's decoder layer (after its input norm) and score MoE layer l's experts.
               available_after = l - 1 (-1 for layer 0: known before the step).
By default every channel the mode and options allow is recorded, for decode and verify steps
(add --channels-in-prefill for prefill steps too). Candidate scores are the router's score
(softmax probability; sigmoid score for DeepSeek-V3-style routers) or the MLP's sigmoid.

Hidden states (--hidden; F16, one row per token of every step, all MoE layers):
  moe_input        input of each MoE block (after the post-attention norm): skip_gate's input
  layer_output     output of the decoder layer holding each MoE layer: the MLP predictor's input
  attn_input       input of that decoder layer's attention (after the input norm): preattn_linear's
  draft_moe_input  (sd only) the draft's feed-forward input at the matching layer, for verify-step
                   tokens 0..gamma-1 (draft_gate's input); zero in every other row
With --gates-out FILE the target's routers are written too (format "moesched-gates": tensors
l{m}.weight [experts, hidden] float32 per MoE layer, a "config" JSON in the metadata), so
`moesched-trace predict` can recompute skip_gate and draft_gate from the stored hidden states.

Prompts (--prompts): a .jsonl file with one object per line, {"text": "...", "id": "..."} ("id"
optional), or any other file with one prompt per line.

The trace's metadata records the exact command, versions, models, seed and per-request output
text. Check a trace with `moesched-trace validate` and `python3 tools/record/test_record.py
consistency` (re-runs the model on the recorded tokens and compares the routing).
"""

import argparse
import hashlib
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402

PREFILL, DECODE, VERIFY = 0, 1, 2
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


class UsageError(Exception):
    """Bad input; the message names the option, file, field or value."""


def load_prompts(path):
    """[(id, text)] from a .jsonl file ({"text", "id"?} per line) or a one-prompt-per-line file."""
    if not os.path.isfile(path):
        raise UsageError(f"--prompts {path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{n}: not a JSON object: {e}") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"]:
                    raise UsageError(f"{path}:{n}: field 'text' must be a non-empty string")
                pid = obj.get("id", f"{os.path.basename(path)}:{n}")
                if not isinstance(pid, (str, int)):
                    raise UsageError(f"{path}:{n}: field 'id' = {pid!r}: must be a string or integer")
                out.append((str(pid), obj["text"]))
            else:
                out.append((f"{os.path.basename(path)}:{n}", line.rstrip("\n")))
    if not out:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    ids = [p[0] for p in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UsageError(f"{path}: prompt id {sorted(dup)[0]!r} appears more than once")
    return out


def load_tokenizer(path):
    """encode(text) -> [ids]: transformers' AutoTokenizer, or a bare tokenizers tokenizer.json."""
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(path)
        return lambda text: list(tok(text)["input_ids"])
    except Exception as first:  # noqa: BLE001 - fall back to a bare tokenizer.json, then report both
        tj = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if os.path.isfile(tj):
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(tj)
            return lambda text: tok.encode(text).ids
        raise UsageError(f"--tokenizer {path}: cannot load a tokenizer: {first}") from None


def load_decoder(path):
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(path)
        return lambda ids: tok.decode(ids)
    except Exception:  # noqa: BLE001
        tj = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if os.path.isfile(tj):
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(tj)
            return lambda ids: tok.decode(ids)
        return lambda ids: ""


def load_model(path, dtype, device, what):
    import torch
    from transformers import AutoModelForCausalLM
    if not os.path.exists(path):
        raise UsageError(f"--{what} {path}: no such file or folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--{what} {path}: cannot load a causal LM: {e}") from None
    return model.to(device).eval()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LearnedPredictor:
    """The per-layer predictors written by train_predictor.py (a safetensors file): kind "mlp"
    (ProMoE: standardise, Linear, GELU, Linear) or "linear" (standardise, Linear, Linear)."""

    SOURCE = {"mlp": "layer_output", "linear": "attn_input"}

    def __init__(self, path, layout, device, option, kind):
        import torch
        if not os.path.isfile(path):
            raise UsageError(f"{option} {path}: no such file")
        md, tensors = mt.read_safetensors(path, mmap=False)
        if md.get("format") != "moesched-mlp-predictor":
            raise UsageError(f"{option} {path}: __metadata__.format is {md.get('format')!r}, "
                             f"not 'moesched-mlp-predictor'")
        self.config = json.loads(md["config"])
        c = self.config
        self.kind = c.get("kind", "mlp")
        if self.kind != kind:
            raise UsageError(f"{option} {path}: field 'kind' = {self.kind!r}: this option takes kind {kind!r}")
        if c.get("hidden_state", self.SOURCE[kind]) != self.SOURCE[kind]:
            raise UsageError(f"{option} {path}: field 'hidden_state' = {c.get('hidden_state')!r}: kind {kind!r} "
                             f"reads {self.SOURCE[kind]!r}")
        for field, want in (("experts", layout.experts), ("hidden_size", layout.hidden_size),
                            ("moe_layers", layout.moe_layers)):
            if int(c[field]) != want:
                raise UsageError(f"{option} {path}: field '{field}' = {c[field]}: the model has {want}")
        self.stride = int(c["stride"])
        self.source = self.SOURCE[kind]
        self.channel = f"mlp_stride{self.stride}" if kind == "mlp" else "preattn_linear"
        self.layers = []  # (source layer, target layer, params)
        for src in c["source_layers"]:
            p = {k: torch.from_numpy(np.array(tensors[f"l{src}.{k}"][1], dtype=np.float32)).to(device)
                 for k in ("mean", "std", "w1", "b1", "w2", "b2")}
            self.layers.append((int(src), int(src) + self.stride, p))
        self.path = path
        self.sha256 = file_sha256(path)

    def predict(self, p, x, candidates):
        import torch
        z = (x.float() - p["mean"]) / p["std"]
        h = z @ p["w1"].T + p["b1"]
        if self.kind == "mlp":
            h = torch.nn.functional.gelu(h)
        logits = h @ p["w2"].T + p["b2"]
        top = torch.topk(logits, candidates, dim=1)
        return top.indices, top.values.sigmoid()


def crop(cache, keep):
    """Drop the cache entries at positions >= keep (transformers wants the count to remove, negative)."""
    drop = cache.get_seq_length() - keep
    if drop > 0:
        cache.crop(-drop)


class Recorder:
    """Runs requests and accumulates the trace's arrays."""

    def __init__(self, args, target, draft, encode, decode):
        import torch
        from moe_hooks import FfnInputHooks, Layout, TargetHooks
        self.torch = torch
        self.args = args
        self.target = target
        self.draft = draft
        self.encode = encode
        self.decode = decode
        self.layout = Layout(target, "--model")
        if self.layout.moe_layers == 0:
            raise UsageError(f"--model {args.model}: no MoE layer found (no feed-forward block with 'gate' and "
                             f"'experts'); is this a dense model?")
        L, E, K = self.layout.moe_layers, self.layout.experts, self.layout.top_k
        self.id_dtype = torch.int16 if E < 32768 else torch.int32  # expert ids while on the device
        self.candidates = args.candidates or K
        if not 1 <= self.candidates <= E:
            raise UsageError(f"--candidates {self.candidates}: must be between 1 and the expert count ({E})")
        self.predictors = []
        if args.mlp_predictor:
            self.predictors.append(LearnedPredictor(args.mlp_predictor, self.layout, args.device, "--mlp-predictor", "mlp"))
        if args.linear_predictor:
            self.predictors.append(LearnedPredictor(args.linear_predictor, self.layout, args.device,
                                                    "--linear-predictor", "linear"))
        self.channels = self._channel_list()
        sources = {p.source for p in self.predictors} | set(args.hidden)
        self.hooks = TargetHooks(self.layout, layer_output="layer_output" in sources, attn_input="attn_input" in sources)
        self.draft_layout = self.draft_hooks = None
        if draft is not None:
            self.draft_layout = Layout(draft, "--draft")
            if self.draft_layout.hidden_size != self.layout.hidden_size and "draft_gate" in self.channels:
                raise UsageError(f"--draft {args.draft}: hidden_size {self.draft_layout.hidden_size} differs from the "
                                 f"target's {self.layout.hidden_size}; the draft_gate channel needs equal widths "
                                 f"(leave it out with --channels)")
            if self.draft_layout.hidden_size != self.layout.hidden_size and "draft_moe_input" in args.hidden:
                raise UsageError(f"--hidden draft_moe_input: the draft's hidden_size {self.draft_layout.hidden_size} "
                                 f"differs from the target's {self.layout.hidden_size}")
            Lt, Ld = self.layout.num_layers, self.draft_layout.num_layers
            self.draft_layer = [d if Lt == Ld else round(d * (Ld - 1) / max(1, Lt - 1)) for d in self.layout.moe_decoder]
            self.draft_hooks = FfnInputHooks(self.draft_layout)
        eos = getattr(target.config, "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        self.vocab = int(target.get_output_embeddings().weight.shape[0])
        # accumulated trace
        self.steps = {k: [] for k in ("request", "phase", "tokens", "draft_len", "accepted")}
        self.routing_experts, self.routing_weights, self.token_ids, self.token_positions = [], [], [], []
        self.hidden = {name: [] for name in args.hidden}
        self.pred = {c: {k: [] for k in ("step", "layer", "token", "available_after", "experts", "scores")}
                     for c in self.channels}
        self.outputs = []
        self.verify_stats = []  # (draft_len, accepted)

    def _channel_list(self):
        a = self.args
        allowed = ["skip_gate"]
        if a.mode == "sd":
            allowed.append("draft_gate")
        allowed += [p.channel for p in self.predictors]
        if a.channels is None:
            return allowed
        out = []
        for c in a.channels.split(","):
            c = c.strip()
            if not c:
                continue
            if c not in allowed:
                why = ("needs --mode sd" if c == "draft_gate" else
                       "needs --mlp-predictor FILE" if c.startswith("mlp_stride") else
                       "needs --linear-predictor FILE" if c == "preattn_linear" else "unknown channel")
                raise UsageError(f"--channels: '{c}': {why} (available here: {', '.join(allowed)})")
            out.append(c)
        return out

    # ---- one forward of each model ----
    def _target_forward(self, ids, cache):
        torch = self.torch
        self.hooks.clear()
        x = torch.tensor([ids], device=self.args.device)
        out = self.target(input_ids=x, past_key_values=cache, use_cache=True)
        self.hooks.check_complete(len(ids))
        return out.logits[0].float(), out.past_key_values

    def _draft_forward(self, ids, cache):
        torch = self.torch
        x = torch.tensor([ids], device=self.args.device)
        out = self.draft(input_ids=x, past_key_values=cache, use_cache=True)
        hid = [self.draft_hooks.inputs[self.draft_layer[m]][-1:].clone() for m in range(self.layout.moe_layers)]
        return out.logits[0, -1].float(), out.past_key_values, hid

    # ---- bookkeeping ----
    def _add_predictions(self, name, step, layer, experts, scores, available_after, tokens=None):
        """Queue one layer's predictions for the tokens of a step; tensors stay on the device
        until finish(), so recording does not wait for the GPU after every prediction."""
        n = experts.shape[0]
        d = self.pred[name]
        d["step"].append(np.full(n, step, np.uint32))
        d["layer"].append(np.full(n, layer, np.uint16))
        d["token"].append(np.arange(n, dtype=np.int32) if tokens is None else np.asarray(tokens, np.int32))
        d["available_after"].append(np.full(n, available_after, np.int16))
        d["experts"].append(experts.to(self.id_dtype))
        d["scores"].append(scores.half())

    def _add_step(self, req, phase, ids, first_pos, draft_len=0, accepted=0, draft_hidden=None):
        from moe_hooks import ranked_candidates
        torch = self.torch
        h = self.hooks
        n = len(ids)
        step = len(self.steps["request"])
        for k, v in (("request", req), ("phase", phase), ("tokens", n), ("draft_len", draft_len), ("accepted", accepted)):
            self.steps[k].append(v)
        self.routing_experts.append(torch.stack(h.index, 1).to(self.id_dtype))
        self.routing_weights.append(torch.stack(h.weights, 1).half())
        self.token_ids.append(np.asarray(ids, np.uint32))
        self.token_positions.append(np.arange(first_pos, first_pos + n, dtype=np.uint32))
        if "layer_output" in self.hidden:
            self.hidden["layer_output"].append(torch.stack(h.layer_output, 1).half())
        if "moe_input" in self.hidden:
            self.hidden["moe_input"].append(torch.stack(h.moe_input, 1).half())
        if "attn_input" in self.hidden:
            self.hidden["attn_input"].append(torch.stack(h.attn_input, 1).half())
        if "draft_moe_input" in self.hidden:  # rows 0..gamma-1 of a verify step; zero elsewhere
            rows = torch.zeros(n, self.layout.moe_layers, self.layout.hidden_size, dtype=torch.float16,
                               device=h.moe_input[0].device)
            for j, per_layer in enumerate(draft_hidden or []):
                rows[j] = torch.cat(per_layer, 0).half()
            self.hidden["draft_moe_input"].append(rows)
        L, C, blocks = self.layout.moe_layers, self.candidates, self.layout.moe_blocks
        if phase != PREFILL or self.args.channels_in_prefill:
            if "skip_gate" in self.channels:
                for m in range(L - 1):
                    e, s = ranked_candidates(blocks[m + 1], h.moe_input[m], C)
                    self._add_predictions("skip_gate", step, m + 1, e, s, m)
            for pred in self.predictors:
                if pred.channel in self.channels:
                    source = h.layer_output if pred.source == "layer_output" else h.attn_input
                    after = 0 if pred.source == "layer_output" else -1  # attn_input of l exists once l-1 ran
                    for src, tgt, p in pred.layers:
                        e, s = pred.predict(p, source[src], C)
                        self._add_predictions(pred.channel, step, tgt, e, s, src + after)
        if draft_hidden is not None and "draft_gate" in self.channels:
            g = len(draft_hidden)
            for m in range(L):
                x = torch.cat([draft_hidden[j][m] for j in range(g)], 0)
                e, s = ranked_candidates(blocks[m], x, C)
                self._add_predictions("draft_gate", step, m, e, s, -1)

    # ---- requests ----
    def run_request(self, req, prompt_ids):
        torch = self.torch
        a = self.args
        with torch.no_grad():
            logits, t_cache = self._target_forward(prompt_ids, None)
            self._add_step(req, PREFILL, prompt_ids, 0)
            seq = list(prompt_ids) + [int(logits[-1].argmax())]
            emitted = 1
            if a.mode == "decode":
                while emitted < a.max_new_tokens and not self._stop(seq[-1]):
                    logits, t_cache = self._target_forward([seq[-1]], t_cache)
                    self._add_step(req, DECODE, [seq[-1]], len(seq) - 1)
                    seq.append(int(logits[-1].argmax()))
                    emitted += 1
            elif a.mode == "sd":
                d_cache, d_len = None, 0
                while emitted < a.max_new_tokens and not self._stop(seq[-1]):
                    n = len(seq)
                    # catch the draft up (the prompt at first; then the 1 or 2 tokens it has not seen)
                    dlog, d_cache, hid = self._draft_forward(seq[d_len:n], d_cache)
                    draft_hidden = [hid]
                    drafts = [int(dlog.argmax())]
                    for _ in range(a.gamma - 1):
                        dlog, d_cache, hid = self._draft_forward([drafts[-1]], d_cache)
                        draft_hidden.append(hid)
                        drafts.append(int(dlog.argmax()))
                    d_len = n + a.gamma - 1
                    if max(drafts) >= self.vocab:
                        raise UsageError(f"--draft {a.draft}: proposed token id {max(drafts)} outside the target's "
                                         f"vocabulary ({self.vocab}); the two models need the same tokenizer")
                    ids = [seq[-1]] + drafts
                    logits, t_cache = self._target_forward(ids, t_cache)
                    best = logits.argmax(dim=-1).tolist()
                    acc = 0
                    while acc < a.gamma and drafts[acc] == best[acc]:
                        acc += 1
                    self._add_step(req, VERIFY, ids, n - 1, a.gamma, acc, draft_hidden)
                    self.verify_stats.append((a.gamma, acc))
                    seq += drafts[:acc] + [best[acc]]
                    emitted += acc + 1
                    crop(t_cache, n + acc)
                    d_len = min(d_len, n + acc)
                    crop(d_cache, d_len)
        return seq

    def _stop(self, tok):
        return not self.args.ignore_eos and tok in self.eos

    def finish(self, prompts, seconds):
        a = self.args
        L, E, K = self.layout.moe_layers, self.layout.experts, self.layout.top_k
        tr = mt.Trace({})
        tr.step_request = np.asarray(self.steps["request"], np.uint32)
        tr.step_phase = np.asarray(self.steps["phase"], np.uint8)
        tr.step_tokens = np.asarray(self.steps["tokens"], np.uint32)
        tr.step_draft_len = np.asarray(self.steps["draft_len"], np.uint16)
        tr.step_accepted = np.asarray(self.steps["accepted"], np.uint16)
        ids_dtype = np.uint8 if E <= 255 else np.uint16

        def host(parts):
            import torch
            return torch.cat(parts).cpu().numpy()
        tr.routing_experts = host(self.routing_experts).astype(ids_dtype)
        tr.routing_weights = host(self.routing_weights)
        tr.token_ids = np.concatenate(self.token_ids)
        tr.token_positions = np.concatenate(self.token_positions)
        for name in self.channels:
            d = self.pred[name]
            if not d["step"]:
                continue
            cat = {k: (host(v) if k in ("experts", "scores") else np.concatenate(v)) for k, v in d.items()}
            order = np.lexsort((cat["token"], cat["layer"], cat["step"]))
            ch = {k: v[order] for k, v in cat.items()}
            ch["experts"] = ch["experts"].astype(ids_dtype)
            ch.update(name=name, description=CHANNEL_TEXT[name.rstrip("0123456789") if name.startswith("mlp") else name],
                      max_candidates=self.candidates)
            tr.channels.append(ch)
        for name, parts in self.hidden.items():
            tr.hidden.append({"name": name, "description": HIDDEN_TEXT[name], "layers": list(range(L)),
                              "hidden_size": self.layout.hidden_size, "dtype": "F16", "values": host(parts)})
        import torch
        try:
            import transformers
            tf_version = transformers.__version__
        except ImportError:  # the CPU test drives the recorder with models of its own
            tf_version = "none"
        verify = np.asarray(self.verify_stats, dtype=np.float64).reshape(-1, 2)
        dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
        tr.meta = {
            "model": {"name": a.model_name or os.path.basename(os.path.normpath(a.model)), "moe_layers": L,
                      "experts_per_layer": E, "top_k": K},
            "source": f"tools/record/record.py (transformers {tf_version}, torch {torch.__version__}, "
                      f"{a.dtype} on {dev})",
            "dataset": a.dataset or os.path.basename(a.prompts),
            "notes": a.notes or "",
            "generated": False,
            "request_count": len(prompts),
            "request_ids": [p[0] for p in prompts],
            "provenance": {
                "command": " ".join(shlex.quote(x) for x in ["python3", "tools/record/record.py"] + a.argv),
                "mode": a.mode, "gamma": a.gamma if a.mode == "sd" else 0, "max_new_tokens": a.max_new_tokens,
                "prompt_tokens": a.prompt_tokens, "dtype": a.dtype, "seed": a.seed,
                "target": self.layout.describe(),
                "draft": self.draft_layout.describe() if self.draft_layout else None,
                "draft_layer_for_moe_layer": self.draft_layer if self.draft_layout else None,
                "mlp_predictor": next(({"file": os.path.basename(p.path), "sha256": p.sha256, "config": p.config}
                                       for p in self.predictors if p.kind == "mlp"), None),
                "linear_predictor": next(({"file": os.path.basename(p.path), "sha256": p.sha256, "config": p.config}
                                          for p in self.predictors if p.kind == "linear"), None),
                "candidates": self.candidates,
                "channels_in_prefill": bool(a.channels_in_prefill),
                "verify_steps": int(len(verify)),
                "mean_accepted": float(verify[:, 1].mean()) if len(verify) else None,
                "acceptance_rate": float(verify[:, 1].sum() / verify[:, 0].sum()) if len(verify) else None,
                "emitted_tokens": int(np.where(tr.step_phase == VERIFY, tr.step_accepted.astype(np.int64) + 1, 1).sum()),
                "outputs": self.outputs,
                "seconds": round(seconds, 2),
            },
        }
        return tr


def write_gates(path, layout, model_name):
    """The target's routers as a "moesched-gates" file (moesched_trace.write_gates: l{m}.weight
    [E, H] float32, plus l{m}.bias / l{m}.score_bias when the routers have them)."""
    gates = [blk.gate for blk in layout.moe_blocks]

    def per_layer(attr):
        arrays = [getattr(g, attr, None) for g in gates]
        return None if any(a is None for a in arrays) else [a.detach().float().cpu().numpy() for a in arrays]
    mt.write_gates(path, [g.weight.detach().float().cpu().numpy() for g in gates], top_k=layout.top_k, model=model_name,
                   biases=per_layer("bias"), score_biases=per_layer("e_score_correction_bias"), source=layout.describe())


CHANNEL_TEXT = {
    "skip_gate": "router of MoE layer l+1 applied to MoE layer l's input, per token; available after layer l",
    "draft_gate": "SP-MoE: the target's router of layer l applied to the draft's post-attention hidden state "
                  "at the matching layer, per verify token the draft processed (0..gamma-1); available before "
                  "the verify step",
    "mlp_stride": "ProMoE: per-layer 2-layer MLP on the decoder-layer output of MoE layer l predicts layer "
                  "l+stride; available after layer l",
    "preattn_linear": "two linear maps on the pre-attention (post input-norm) hidden state of MoE layer l's "
                      "decoder layer predict layer l; available after layer l-1",
}
HIDDEN_TEXT = mt.HIDDEN_STATES  # the names moesched-trace predict reads


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="record.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, metavar="DIR",
                    help="target MoE model: a Hugging Face model folder (config.json + weights)")
    ap.add_argument("--prompts", required=True, metavar="FILE", help="prompts: .jsonl ({\"text\", \"id\"?}) or one per line")
    ap.add_argument("-o", "--output", required=True, metavar="FILE", help="trace to write (NAME.trace.safetensors)")
    ap.add_argument("--mode", choices=("prefill", "decode", "sd"), default="decode", help="what to run (default: decode)")
    ap.add_argument("--draft", metavar="DIR", help="draft model folder (--mode sd); same tokenizer as the target")
    ap.add_argument("--gamma", type=int, default=4, help="draft tokens proposed per verify step (--mode sd; default 4)")
    ap.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder or tokenizer.json (default: --model)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="output tokens per request, the prefill's "
                    "included (default 128); a verify step may overshoot by up to gamma")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="cut each prompt to its first N tokens (0 = keep all)")
    ap.add_argument("--max-requests", type=int, default=0, help="use only the first N prompts (0 = all)")
    ap.add_argument("--ignore-eos", action="store_true", help="do not stop a request at an end-of-sequence token")
    ap.add_argument("--channels", metavar="LIST", help="comma-separated channels to record (default: every one the "
                    "mode allows: skip_gate, draft_gate with --mode sd, mlp_strideS with --mlp-predictor)")
    ap.add_argument("--mlp-predictor", metavar="FILE", help="predictor from train_predictor.py: adds mlp_strideS")
    ap.add_argument("--linear-predictor", metavar="FILE",
                    help="predictor from train_predictor.py --kind linear: adds preattn_linear")
    ap.add_argument("--gates-out", metavar="FILE", help="also write the target's routers (format moesched-gates)")
    ap.add_argument("--candidates", type=int, default=0, help="experts listed per prediction (default: top_k)")
    ap.add_argument("--channels-in-prefill", action="store_true", help="also record predictions for prefill steps")
    ap.add_argument("--hidden", default="", metavar="LIST", help="hidden states to store (F16): layer_output, "
                    "moe_input, attn_input, draft_moe_input (sd only)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights and compute (default float32)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--model-name", help="model.name in the trace (default: the --model folder name)")
    ap.add_argument("--dataset", help="where the prompts came from (trace metadata)")
    ap.add_argument("--notes", help="free text for the trace metadata")
    ap.add_argument("--seed", type=int, default=0, help="torch seed (decoding is greedy; default 0)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.dtype = DTYPES[a.dtype]
    a.hidden = [h.strip() for h in a.hidden.split(",") if h.strip()]
    for h in a.hidden:
        if h not in HIDDEN_TEXT:
            raise UsageError(f"--hidden: '{h}': unknown (choose from {', '.join(HIDDEN_TEXT)})")
    if "draft_moe_input" in a.hidden and a.mode != "sd":
        raise UsageError(f"--hidden draft_moe_input: needs --mode sd (mode is {a.mode})")
    if a.mode == "sd" and not a.draft:
        raise UsageError("--mode sd needs --draft DIR")
    if a.mode != "sd" and a.draft:
        raise UsageError(f"--draft is only used with --mode sd (mode is {a.mode})")
    if a.gamma < 1 or a.gamma > 64:
        raise UsageError(f"--gamma {a.gamma}: must be between 1 and 64")
    for name in ("max_new_tokens", "prompt_tokens", "max_requests", "candidates"):
        if getattr(a, name) < 0 or (name == "max_new_tokens" and a.max_new_tokens < 1):
            raise UsageError(f"--{name.replace('_', '-')} {getattr(a, name)}: must be "
                             f"{'>= 1' if name == 'max_new_tokens' else '>= 0'}")
    for opt, path in (("-o", a.output), ("--gates-out", a.gates_out)):
        out_dir = os.path.dirname(os.path.abspath(path)) if path else None
        if out_dir and not os.path.isdir(out_dir):
            raise UsageError(f"{opt} {path}: folder {out_dir} does not exist")
    return a


def main(argv=None):
    try:
        a = parse_args(argv)
        prompts = load_prompts(a.prompts)
        if a.max_requests:
            prompts = prompts[:a.max_requests]
        import torch
        if a.device is None:
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(a.seed)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        encode = load_tokenizer(a.tokenizer or a.model)
        decode = load_decoder(a.tokenizer or a.model)
        target = load_model(a.model, a.dtype, a.device, "model")
        draft = load_model(a.draft, a.dtype, a.device, "draft") if a.draft else None
        rec = Recorder(a, target, draft, encode, decode)
        t0 = time.time()
        for r, (pid, text) in enumerate(prompts):
            ids = encode(text)
            if a.prompt_tokens:
                ids = ids[:a.prompt_tokens]
            if not ids:
                raise UsageError(f"--prompts {a.prompts}: prompt {pid!r} has no tokens")
            seq = rec.run_request(r, ids)
            rec.outputs.append({"id": pid, "prompt_tokens": len(ids), "output_tokens": len(seq) - len(ids),
                                "output_text": decode(seq[len(ids):])})
            if not a.quiet:
                steps = len(rec.steps["request"])
                print(f"record: request {r + 1}/{len(prompts)} {pid}: {len(ids)} prompt + {len(seq) - len(ids)} "
                      f"output tokens, {steps} steps so far, {time.time() - t0:.1f} s", file=sys.stderr)
        tr = rec.finish(prompts, time.time() - t0)
        mt.write(a.output, tr)
        if a.gates_out:
            write_gates(a.gates_out, rec.layout, tr.meta["model"]["name"])
        if not a.quiet:
            p = tr.meta["provenance"]
            acc = f", acceptance {p['acceptance_rate']:.3f} (mean {p['mean_accepted']:.2f} of {a.gamma})" \
                if p["acceptance_rate"] is not None else ""
            print(f"record: wrote {a.output}: {len(tr.step_tokens)} steps, {tr.routing_experts.shape[0]} tokens, "
                  f"{len(tr.channels)} channels{acc}", file=sys.stderr)
        return 0
    except UsageError as e:
        print(f"record.py: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # moe_hooks.LayoutError: a model layout the recorder does not know
        from moe_hooks import LayoutError
        if not isinstance(e, LayoutError):
            raise
        print(f"record.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
