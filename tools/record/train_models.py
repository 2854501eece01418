#!/usr/bin/env python3
"""Train the project's own draft/target model pair on one GPU, from Debian-packaged text.

  bash tools/record/prepare_corpus.sh                       # on a Debian machine: the corpus
  python3 tools/record/train_models.py --corpus tools/record/corpus --out work/models

What it does, seeded (--seed) from start to end:
 1. reads prose (King James Bible chapters) and code (Python standard-library files) from the
    corpus; documents are split train / held-out by prepare_corpus.py;
 2. trains a byte-level BPE tokenizer (Hugging Face `tokenizers`, --vocab entries, one special
    token <|endoftext|> that ends every document) on the training documents;
 3. writes prompts-{code,prose}.jsonl: --prompts passages cut from held-out documents at a line
    (code) or sentence (prose) start; and predictor-train.jsonl: --predictor-passages passages
    per domain from training documents (data for train_predictor.py);
 4. trains the draft: a dense MistralForCausalLM (--layers x --hidden, --heads query and
    --kv-heads key/value heads, SwiGLU FFN of --ffn), on batches that are half code, half prose;
 5. upcycles two MoE targets from the draft with the same depth, width, attention, embeddings
    and norms (copied), and trains each further (--target-steps) with the load-balancing loss:
    - "mix": MixtralForCausalLM, --mix-experts experts, top --mix-top-k; every expert starts as
      the draft's FFN plus Gaussian noise (--noise x the weight's std), the router is new. Before
      the noise is added, its logits equal the draft's (checked; the difference is reported);
    - "fg": Qwen2MoeForCausalLM, fine-grained as Qwen1.5-MoE was made: the draft's FFN is cut
      into --fg-slices slices of the intermediate dimension; the first --fg-shared-slices become
      the shared expert (its output doubled, since its sigmoid gate starts at 0.5) and each of the
      other slices is copied into --fg-experts / (slices - shared) routed experts (plus noise,
      output scaled by the number of routed slices so a uniform router gives the draft's FFN in
      expectation), top --fg-top-k;
 6. reports validation loss (mean next-token cross-entropy on held-out documents, per domain) of
    the draft, of each target right after upcycling and after training, parameter counts, steps,
    tokens and seconds per stage, in --out/train_report.json (rewritten after every stage).

Models are saved with save_pretrained (safetensors) in --out/{draft,mix,fg}, each with the
tokenizer, so record.py loads them by folder.
"""

import argparse
import copy
import json
import lzma
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

EOS = "<|endoftext|>"


def fail(msg):
    print(f"train_models.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_domain(corpus, domain):
    path = os.path.join(corpus, f"{domain}.jsonl.xz")
    if not os.path.isfile(path):
        fail(f"--corpus {corpus}: {domain}.jsonl.xz missing (run tools/record/prepare_corpus.sh)")
    docs = {"train": [], "heldout": []}
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            d = json.loads(line)
            if d.get("split") not in docs or not isinstance(d.get("text"), str):
                fail(f"{path}:{n}: field 'split' must be train or heldout and 'text' a string")
            docs[d["split"]].append((d["id"], d["text"]))
    return docs


def train_tokenizer(texts, vocab, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return tok


def save_tokenizer_files(tok_dir, model_dir):
    """tokenizer.json plus a tokenizer_config.json that AutoTokenizer reads."""
    import shutil
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": None,
                   "unk_token": None, "pad_token": None, "add_bos_token": False, "model_max_length": 4096}, f, indent=2)


def make_prompts(docs, domain, n, rng, chars):
    """n passages of `chars` characters from held-out documents, starting at a line (code) or
    sentence (prose) start; ids are 'document@offset'."""
    pool = sorted(d for d in docs if len(d[1]) > 2 * chars)
    if len(pool) < n:
        fail(f"{domain}: only {len(pool)} held-out documents longer than {2 * chars} characters, need {n}")
    out = []
    for doc_id, text in rng.sample(pool, n):
        if domain == "code":
            starts = [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text) - chars
                      and text[i + 1] not in " \n#"]
        else:
            starts = [i + 2 for i in range(len(text) - chars) if text[i:i + 2] == ". " and text[i + 2].isupper()]
        off = rng.choice(starts) if starts else 0
        out.append({"id": f"{doc_id}@{off}", "text": text[off:off + chars]})
    return out


class Data:
    """Token streams per domain and split; random training windows, fixed validation windows."""

    def __init__(self, tok, docs, device, seq, seed):
        import numpy as np
        import torch
        self.torch = torch
        eos = tok.token_to_id(EOS)
        self.streams = {}
        for dom, splits in docs.items():
            for sp, items in splits.items():
                enc = tok.encode_batch([t for _, t in items])
                ids = []
                for e in enc:
                    ids.extend(e.ids)
                    ids.append(eos)
                self.streams[(dom, sp)] = torch.tensor(np.asarray(ids, dtype=np.int64), device=device)
        self.seq = seq
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def tokens(self, dom, sp):
        return int(self.streams[(dom, sp)].numel())

    def batch(self, size):
        torch = self.torch
        parts = []
        doms = sorted({d for d, _ in self.streams})
        for i, dom in enumerate(doms):
            s = self.streams[(dom, "train")]
            n = size // len(doms) + (1 if i < size % len(doms) else 0)
            starts = torch.randint(0, s.numel() - self.seq - 1, (n,), device=self.device, generator=self.gen)
            parts.append(s[starts[:, None] + torch.arange(self.seq + 1, device=self.device)])
        return torch.cat(parts)

    def val_windows(self, dom, count):
        s = self.streams[(dom, "heldout")]
        n = min(count, (s.numel() - 1) // self.seq)
        return [s[i * self.seq: i * self.seq + self.seq + 1] for i in range(n)]


def rope_attrs(src_cfg, dst_cfg):
    for attr in ("rope_parameters", "rope_theta", "rope_scaling"):
        if hasattr(src_cfg, attr):
            setattr(dst_cfg, attr, copy.deepcopy(getattr(src_cfg, attr)))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def active_params(model):
    from moe_hooks import Layout
    lay = Layout(model)
    total = count_params(model)
    for blk in lay.moe_blocks:
        per_expert = sum(p.numel() for p in blk.experts.parameters()) // lay.experts
        total -= (lay.experts - lay.top_k) * per_expert
    return total


def evaluate(model, data, windows):
    import torch
    import torch.nn.functional as F
    model.eval()
    out = {}
    with torch.no_grad():
        for dom in sorted({d for d, _ in data.streams}):
            ws = data.val_windows(dom, windows)
            total, count = 0.0, 0
            for i in range(0, len(ws), 16):
                x = torch.stack(ws[i:i + 16])
                logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
                count += x[:, 1:].numel()
            out[dom] = round(total / count, 4)
    model.train()
    return out


def train(model, data, steps, batch, lr, warmup, aux_coef, label, curve):
    import torch
    import torch.nn.functional as F
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=torch.cuda.is_available())
    warm = max(1, int(warmup * steps))

    def factor(s):
        return min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    t0 = time.time()
    dev_type = "cuda" if torch.cuda.is_available() else "cpu"
    for step in range(steps):
        x = data.batch(batch)
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=dev_type == "cuda"):
            out = model(input_ids=x[:, :-1], use_cache=False)
            ce = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), x[:, 1:].reshape(-1))
            loss = ce
            if aux_coef:
                aux = getattr(out, "aux_loss", None)
                if aux is None:
                    fail(f"{label}: the model returned no aux_loss although output_router_logits is on")
                loss = ce + aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            ce_v = float(ce.detach())
            curve.append({"step": step, "train_ce": round(ce_v, 4)})
            rate = (step + 1) * batch * data.seq / max(1e-9, time.time() - t0)
            log(f"{label}: step {step}/{steps} ce {ce_v:.3f} lr {sched.get_last_lr()[0]:.2e} {rate / 1e3:.0f}k tok/s")
    model.eval()
    return time.time() - t0


def moe_block(layer):
    """(attribute name, block) of the layer's MoE block."""
    from moe_hooks import find_ffn, is_moe_block
    name, blk = find_ffn(layer)
    if blk is None or not is_moe_block(blk):
        fail(f"{type(layer).__name__}: no MoE block found")
    return name, blk


def check_shape(name, tensor, shape):
    if tuple(tensor.shape) != tuple(shape):
        fail(f"upcycling: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} (transformers layout changed?)")


def upcycle(target, draft, kind, a, gen):
    """Copy the draft's shared parts into `target` and build its experts from the draft's FFN
    (see the module docstring). Returns the names of parameters set."""
    import torch
    tp = dict(target.named_parameters())
    dp = dict(draft.named_parameters())
    done = set()
    with torch.no_grad():
        for name, p in tp.items():
            if name in dp and tuple(dp[name].shape) == tuple(p.shape):
                p.copy_(dp[name])
                done.add(name)
        for i, (tl, dl) in enumerate(zip(target.model.layers, draft.model.layers)):
            bname, blk = moe_block(tl)
            W1, W3, W2 = dl.mlp.gate_proj.weight, dl.mlp.up_proj.weight, dl.mlp.down_proj.weight  # [I,H] [I,H] [H,I]
            I, H = W1.shape
            ex = blk.experts
            E = blk.gate.weight.shape[0]
            blk.gate.weight.normal_(0.0, 0.02, generator=gen)
            if getattr(blk.gate, "bias", None) is not None:
                blk.gate.bias.zero_()
            if kind == "mix":
                check_shape("experts.gate_up_proj", ex.gate_up_proj, (E, 2 * I, H))
                check_shape("experts.down_proj", ex.down_proj, (E, H, I))
                for e in range(E):
                    ex.gate_up_proj[e] = torch.cat([W1, W3], 0)
                    ex.down_proj[e] = W2
            else:
                S, Sh = a.fg_slices, a.fg_shared_slices
                R = S - Sh
                Ie = I // S
                check_shape("experts.gate_up_proj", ex.gate_up_proj, (E, 2 * Ie, H))
                check_shape("experts.down_proj", ex.down_proj, (E, H, Ie))
                for e in range(E):
                    s = Sh + e % R
                    sl = slice(s * Ie, (s + 1) * Ie)
                    ex.gate_up_proj[e] = torch.cat([W1[sl], W3[sl]], 0)
                    ex.down_proj[e] = W2[:, sl] * R
                sh = blk.shared_expert
                Is = Sh * Ie
                check_shape("shared_expert.gate_proj.weight", sh.gate_proj.weight, (Is, H))
                sh.gate_proj.weight.copy_(W1[:Is])
                sh.up_proj.weight.copy_(W3[:Is])
                sh.down_proj.weight.copy_(W2[:, :Is] * 2.0)
                blk.shared_expert_gate.weight.zero_()
                for n_ in ("shared_expert.gate_proj.weight", "shared_expert.up_proj.weight",
                           "shared_expert.down_proj.weight", "shared_expert_gate.weight"):
                    done.add(f"model.layers.{i}.{bname}.{n_}")
            for n_, _ in blk.named_parameters():
                done.add(f"model.layers.{i}.{bname}.{n_}")
        missing = []
        for name, p in tp.items():
            if name in done:
                continue
            if name.endswith(".bias") and ".self_attn." in name:
                p.zero_()  # Qwen2's q/k/v biases: zero keeps the draft's attention
                continue
            missing.append(name)
        if missing:
            fail(f"upcycling {kind}: no rule for parameters {missing[:8]}")


def add_noise(target, scale, gen):
    import torch
    from moe_hooks import Layout
    with torch.no_grad():
        for blk in Layout(target).moe_blocks:
            for p in (blk.experts.gate_up_proj, blk.experts.down_proj):
                for e in range(p.shape[0]):
                    std = float(p[e].std())
                    p[e] += torch.randn(p[e].shape, generator=gen, device=p.device) * (scale * std)


def first_ffn_input_diff(target, draft, x):
    """Max |difference| between the layer-0 feed-forward inputs of target and draft on x: 0 up to
    rounding when embeddings, norms and attention were copied faithfully."""
    import torch
    from moe_hooks import FfnInputHooks, Layout
    ht, hd = FfnInputHooks(Layout(target)), FfnInputHooks(Layout(draft))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        lt = target(input_ids=x, use_cache=False).logits.float()
        ld = draft(input_ids=x, use_cache=False).logits.float()
    d0 = float((ht.inputs[0] - hd.inputs[0]).abs().max())
    dl = float((lt - ld).abs().max())
    torch.backends.cuda.matmul.allow_tf32 = tf32
    ht.remove()
    hd.remove()
    return d0, dl


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="folder from prepare_corpus.sh ({prose,code}.jsonl.xz)")
    ap.add_argument("--out", required=True, help="output folder (models, tokenizer, prompts, train_report.json)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    ap.add_argument("--hidden", type=int, default=384, help="model width (default 384)")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (default 8)")
    ap.add_argument("--heads", type=int, default=6, help="query heads (default 6)")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2)")
    ap.add_argument("--ffn", type=int, default=1536, help="draft FFN width = one Mixtral-like expert (default 1536)")
    ap.add_argument("--seq", type=int, default=256, help="training window in tokens (default 256)")
    ap.add_argument("--batch", type=int, default=32, help="windows per step, half per domain (default 32)")
    ap.add_argument("--draft-steps", type=int, default=1000, help="draft optimiser steps (default 1000)")
    ap.add_argument("--target-steps", type=int, default=500, help="steps for each target (default 500)")
    ap.add_argument("--draft-lr", type=float, default=1.5e-3)
    ap.add_argument("--target-lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the steps (default 0.05)")
    ap.add_argument("--aux-coef", type=float, default=0.01, help="load-balancing loss weight for the targets")
    ap.add_argument("--noise", type=float, default=0.01, help="expert noise, in units of each weight's std")
    ap.add_argument("--mix-experts", type=int, default=8)
    ap.add_argument("--mix-top-k", type=int, default=2)
    ap.add_argument("--fg-experts", type=int, default=64)
    ap.add_argument("--fg-top-k", type=int, default=4)
    ap.add_argument("--fg-slices", type=int, default=8, help="slices the draft FFN is cut into (default 8)")
    ap.add_argument("--fg-shared-slices", type=int, default=4, help="slices that form the shared expert (default 4)")
    ap.add_argument("--val-windows", type=int, default=48, help="held-out windows per domain for val loss")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per domain (default 8)")
    ap.add_argument("--prompt-chars", type=int, default=600, help="characters per prompt passage (default 600)")
    ap.add_argument("--predictor-passages", type=int, default=96,
                    help="training-split passages per domain written to predictor-train.jsonl (default 96)")
    ap.add_argument("--predictor-chars", type=int, default=1200, help="characters per such passage (default 1200)")
    ap.add_argument("--only", default="draft,mix,fg", help="stages to run (default draft,mix,fg)")
    a = ap.parse_args()
    if a.ffn % a.fg_slices or not 0 < a.fg_shared_slices < a.fg_slices or a.fg_experts % (a.fg_slices - a.fg_shared_slices):
        fail(f"--ffn {a.ffn} / --fg-slices {a.fg_slices} / --fg-shared-slices {a.fg_shared_slices} / --fg-experts "
             f"{a.fg_experts}: the FFN must split evenly and the routed experts must be a multiple of the routed slices")

    import torch
    from transformers import (MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM,
                              Qwen2MoeConfig, Qwen2MoeForCausalLM)
    import transformers
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(a.out, exist_ok=True)
    report = {"seed": a.seed, "args": vars(a), "torch": torch.__version__, "transformers": transformers.__version__,
              "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "stages": {}}

    def save_report():
        with open(os.path.join(a.out, "train_report.json"), "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")

    t0 = time.time()
    docs = {d: read_domain(a.corpus, d) for d in ("code", "prose")}
    tok_dir = os.path.join(a.out, "tokenizer")
    tok = train_tokenizer([t for d in docs.values() for _, t in d["train"]], a.vocab, tok_dir)
    data = Data(tok, docs, dev, a.seq, a.seed)
    rng = random.Random(a.seed)
    for dom in ("code", "prose"):
        with open(os.path.join(a.out, f"prompts-{dom}.jsonl"), "w") as f:
            for p in make_prompts(docs[dom]["heldout"], dom, a.prompts, rng, a.prompt_chars):
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
    with open(os.path.join(a.out, "predictor-train.jsonl"), "w") as f:
        for dom in ("code", "prose"):
            for p in make_prompts(docs[dom]["train"], dom, a.predictor_passages, rng, a.predictor_chars):
                f.write(json.dumps(dict(p, id=f"{dom}:{p['id']}"), ensure_ascii=False) + "\n")
    report["data"] = {f"{d}_{s}_tokens": data.tokens(d, s) for d in ("code", "prose") for s in ("train", "heldout")}
    report["data"]["documents"] = {d: {s: len(v) for s, v in docs[d].items()} for d in docs}
    report["stages"]["tokenizer_and_data"] = {"seconds": round(time.time() - t0, 1), "vocab": tok.get_vocab_size()}
    log(f"tokenizer {tok.get_vocab_size()} entries, tokens {report['data']}, {time.time() - t0:.1f} s")
    save_report()
    eos = tok.token_to_id(EOS)
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=a.hidden, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos,
                  pad_token_id=eos, initializer_range=0.02)
    gen = torch.Generator(device=dev).manual_seed(a.seed + 1)

    draft_dir = os.path.join(a.out, "draft")
    dcfg = MistralConfig(intermediate_size=a.ffn, sliding_window=None, **common)
    stages = a.only.split(",")
    if "draft" in stages:
        torch.manual_seed(a.seed)
        draft = MistralForCausalLM(dcfg).to(dev)
        curve = []
        secs = train(draft, data, a.draft_steps, a.batch, a.draft_lr, a.warmup, 0.0, "draft", curve)
        val = evaluate(draft, data, a.val_windows)
        draft.save_pretrained(draft_dir)
        save_tokenizer_files(tok_dir, draft_dir)
        report["stages"]["draft"] = {"class": "MistralForCausalLM", "params": count_params(draft), "steps": a.draft_steps,
                                     "tokens": a.draft_steps * a.batch * a.seq, "seconds": round(secs, 1),
                                     "val_loss": val, "curve": curve}
        log(f"draft: val loss {val}, {secs:.0f} s")
        save_report()
    else:
        draft = MistralForCausalLM.from_pretrained(draft_dir).to(dev)
    draft.eval()
    dcfg = draft.config

    probe_x = data.val_windows("code", 2)[0][None, :64]
    for kind in ("mix", "fg"):
        if kind not in stages:
            continue
        t1 = time.time()
        if kind == "mix":
            cfg = MixtralConfig(intermediate_size=a.ffn, num_local_experts=a.mix_experts,
                                num_experts_per_tok=a.mix_top_k, sliding_window=None, router_aux_loss_coef=a.aux_coef,
                                output_router_logits=True, **common)
            cls = MixtralForCausalLM
        else:
            cfg = Qwen2MoeConfig(intermediate_size=a.ffn, moe_intermediate_size=a.ffn // a.fg_slices,
                                 shared_expert_intermediate_size=a.fg_shared_slices * (a.ffn // a.fg_slices),
                                 num_experts=a.fg_experts, num_experts_per_tok=a.fg_top_k, norm_topk_prob=True,
                                 decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
                                 router_aux_loss_coef=a.aux_coef, output_router_logits=True, qkv_bias=False, **common)
            cls = Qwen2MoeForCausalLM
        rope_attrs(dcfg, cfg)
        torch.manual_seed(a.seed + (2 if kind == "mix" else 3))
        model = cls(cfg).to(dev)
        upcycle(model, draft, kind, a, gen)
        ffn0_diff, logit_diff = first_ffn_input_diff(model, draft, probe_x)
        add_noise(model, a.noise, gen)
        val0 = evaluate(model, data, a.val_windows)
        log(f"{kind}: upcycled; layer-0 FFN input max diff {ffn0_diff:.2e}, logits max diff {logit_diff:.2e} "
            f"(before noise), val loss {val0}")
        curve = []
        secs = train(model, data, a.target_steps, a.batch, a.target_lr, a.warmup, a.aux_coef, kind, curve)
        val = evaluate(model, data, a.val_windows)
        model.config.output_router_logits = False
        out_dir = os.path.join(a.out, kind)
        model.save_pretrained(out_dir)
        save_tokenizer_files(tok_dir, out_dir)
        report["stages"][kind] = {
            "class": cls.__name__, "params": count_params(model), "active_params": active_params(model),
            "experts": cfg.num_local_experts if kind == "mix" else cfg.num_experts,
            "top_k": cfg.num_experts_per_tok,
            "expert_ffn": a.ffn if kind == "mix" else a.ffn // a.fg_slices,
            "shared_expert_ffn": 0 if kind == "mix" else a.fg_shared_slices * (a.ffn // a.fg_slices),
            "upcycle_check": {"layer0_ffn_input_max_abs_diff": ffn0_diff,
                              "logits_max_abs_diff_before_noise": logit_diff},
            "val_loss_after_upcycling": val0, "steps": a.target_steps, "tokens": a.target_steps * a.batch * a.seq,
            "seconds_total": round(time.time() - t1, 1), "seconds_training": round(secs, 1), "val_loss": val,
            "curve": curve}
        log(f"{kind}: val loss {val}, {secs:.0f} s training")
        save_report()
        del model
        torch.cuda.empty_cache()
    report["seconds"] = round(time.time() - t0, 1)
    save_report()


if __name__ == "__main__":
    main()
