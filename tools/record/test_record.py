#!/usr/bin/env python3
"""Checks of the recorder.

  test_record.py validate T...            format rules of traces/FORMAT.md, in numpy (no model)
  test_record.py same-output A B          two traces of the same prompts emit the same tokens
                                          (greedy decoding vs speculative decoding; no model)
  test_record.py consistency --model DIR --trace T [--steps N]
                                          re-run the model without a KV cache on the recorded
                                          tokens of a few steps and compare the routing
  test_record.py arch-check --tokenizer DIR --out DIR
                                          randomly initialised small Mixtral, Qwen2-MoE,
                                          Qwen3-MoE, OLMoE and DeepSeek-V3 models (and a dense
                                          Mistral draft of the same width): record decode and SD
                                          traces, validate them, check consistency

Each prints what it checked and exits 1 on a failed check, 2 on bad input. `validate` and
`same-output` need only numpy (they run on a machine without torch).
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402


def validate_trace(path, recorded=True):
    """Problems found in a trace (empty when valid), by the rules of traces/FORMAT.md; with
    `recorded`, also that the metadata does not call it generated."""
    errs = []
    try:
        t = mt.read(path, mmap=False)
    except (mt.TraceError, KeyError, ValueError) as e:
        return [str(e)]
    m = t.meta["model"]
    L, E, K = m["moe_layers"], m["experts_per_layer"], m["top_k"]
    ph, tok, dl, acc = t.step_phase, t.step_tokens.astype(np.int64), t.step_draft_len, t.step_accepted
    if recorded and t.meta.get("generated"):
        errs.append("metadata says generated: true")
    if (tok < 1).any():
        errs.append("a step with no tokens")
    if ((ph == 1) & (tok != 1)).any():
        errs.append("a decode step with tokens != 1")
    v = ph == 2
    if (v & ((dl < 1) | (tok != dl.astype(np.int64) + 1) | (acc > dl))).any():
        errs.append("a verify step breaks draft_len >= 1, tokens = draft_len + 1, accepted <= draft_len")
    if (~v & ((dl != 0) | (acc != 0))).any():
        errs.append("a non-verify step with draft_len or accepted set")
    if (t.step_request >= t.meta["request_count"]).any():
        errs.append("step_request >= request_count")
    re_ = t.routing_experts.astype(np.int64)
    if (re_ >= E).any():
        errs.append("routing expert id >= experts_per_layer")
    srt = np.sort(re_, axis=-1)
    if K > 1 and (srt[..., 1:] == srt[..., :-1]).any():
        errs.append("an expert repeated in a token's top-k row")
    if t.routing_weights is not None and not np.isfinite(np.asarray(t.routing_weights, np.float32)).all():
        errs.append("non-finite gate weight")
    first = t.step_first_token()
    for ch in t.channels:
        name = ch["name"]
        s, l_, tk, av = (ch[k].astype(np.int64) for k in ("step", "layer", "token", "available_after"))
        key = np.stack([s, l_, tk], 1)
        if len(key) > 1 and (np.lexsort((tk, l_, s)) != np.arange(len(s))).any():
            errs.append(f"channel {name}: predictions not sorted by (step, layer, token)")
        if (s >= len(tok)).any() or (l_ >= L).any():
            errs.append(f"channel {name}: step or layer out of range")
            continue
        if ((tk < -1) | (tk >= tok[s])).any():
            errs.append(f"channel {name}: token out of its step")
        if ((av < -1) | (av >= L)).any():
            errs.append(f"channel {name}: available_after out of range")
        ex = ch["experts"].astype(np.int64)
        pad = 0xFF if ch["experts"].dtype == np.uint8 else 0xFFFF
        real = ex != pad
        if (real & (ex >= E)).any():
            errs.append(f"channel {name}: candidate >= experts_per_layer")
        if (real[:, 1:] & ~real[:, :-1]).any():
            errs.append(f"channel {name}: padding before a candidate")
        se = np.sort(np.where(real, ex, -1 - np.arange(ex.shape[1])), axis=1)
        if (se[:, 1:] == se[:, :-1]).any():
            errs.append(f"channel {name}: repeated candidate")
        del key
    del first
    return errs


def final_sequences(t):
    """Per request: the token sequence the run produced (prompt and accepted output), rebuilt from
    the steps (rejected drafts are overwritten by the next step)."""
    out = {}
    first = t.step_first_token()
    for s in range(len(t.step_tokens)):
        r = int(t.step_request[s])
        pos = t.token_positions[first[s]:first[s + 1]].astype(np.int64)
        ids = t.token_ids[first[s]:first[s + 1]]
        seq = out.setdefault(r, {})
        for p, i in zip(pos, ids):
            seq[int(p)] = int(i)
        keep = int(pos[0]) + (int(t.step_accepted[s]) + 1 if t.step_phase[s] == 2 else len(pos))
        for p in [p for p in seq if p >= keep]:
            del seq[p]
    return {r: [seq[p] for p in sorted(seq)] for r, seq in out.items()}


def cmd_validate(a):
    bad = 0
    for path in a.traces:
        errs = validate_trace(path, recorded=not a.allow_generated)
        print(f"{'ok  ' if not errs else 'FAIL'} {path}" + "".join(f"\n     {e}" for e in errs))
        bad += bool(errs)
    print(f"{len(a.traces) - bad} passed, {bad} failed")
    return 1 if bad else 0


def cmd_same_output(a):
    ta, tb = mt.read(a.a, mmap=False), mt.read(a.b, mmap=False)
    for t, p in ((ta, a.a), (tb, a.b)):
        if t.token_ids is None or t.token_positions is None:
            print(f"{p}: no token_ids / token_positions", file=sys.stderr)
            return 2
    sa, sb = final_sequences(ta), final_sequences(tb)
    bad = 0
    compared = 0
    for r in sorted(set(sa) & set(sb)):
        n = min(len(sa[r]), len(sb[r]))
        diff = next((i for i in range(n) if sa[r][i] != sb[r][i]), None)
        compared += n
        if diff is not None:
            bad += 1
            print(f"request {r}: sequences differ first at position {diff} (of {n} compared)")
    print(f"same-output: {len(set(sa) & set(sb)) - bad} passed, {bad} failed ({compared} positions compared)")
    return 1 if bad else 0


def prefix_before_steps(t):
    """For each step: the tokens at positions before the step's first token (the context the
    model saw), rebuilt from the earlier steps."""
    first = t.step_first_token()
    seqs, ctx = {}, []
    for s in range(len(t.step_tokens)):
        r = int(t.step_request[s])
        pos = t.token_positions[first[s]:first[s + 1]].astype(np.int64)
        seq = seqs.setdefault(r, {})
        ctx.append([seq[p] for p in range(int(pos[0]))])
        for p, i in zip(pos, t.token_ids[first[s]:first[s + 1]]):
            seq[int(p)] = int(i)
    return ctx


def consistency(model, trace_path, max_steps, device, tolerance=0.99):
    """Re-run the model with no cache on [context + step tokens] for a few steps and compare the
    routing with the trace. Returns a summary dict."""
    import torch
    from moe_hooks import Layout, TargetHooks
    t = mt.read(trace_path, mmap=False)
    if t.token_ids is None or t.token_positions is None:
        raise ValueError(f"{trace_path}: the trace has no token_ids / token_positions")
    lay = Layout(model)
    hooks = TargetHooks(lay)
    ctx = prefix_before_steps(t)
    first = t.step_first_token()
    S = len(t.step_tokens)
    # the first steps of every request, then the last step of each
    chosen = []
    for r in range(t.meta["request_count"]):
        steps = [s for s in range(S) if t.step_request[s] == r]
        chosen += steps[:3] + steps[-1:]
    chosen = sorted(set(chosen))[:max_steps]
    rows = same = 0
    wmax = 0.0
    for s in chosen:
        ids = ctx[s] + [int(x) for x in t.token_ids[first[s]:first[s + 1]]]
        n = int(t.step_tokens[s])
        hooks.clear()
        with torch.no_grad():
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
        got = torch.stack(hooks.index, 1)[-n:].cpu().numpy()
        gw = torch.stack(hooks.weights, 1)[-n:].cpu().numpy()
        want = t.routing_experts[first[s]:first[s + 1]].astype(np.int64)
        ww = np.asarray(t.routing_weights[first[s]:first[s + 1]], np.float32)
        og, ow = np.argsort(got, -1), np.argsort(want, -1)
        g_sorted, w_sorted = np.take_along_axis(got, og, -1), np.take_along_axis(want, ow, -1)
        eq = (g_sorted == w_sorted).all(-1)
        rows += eq.size
        same += int(eq.sum())
        if eq.any():
            d = np.abs(np.take_along_axis(gw, og, -1) - np.take_along_axis(ww, ow, -1))[eq]
            wmax = max(wmax, float(d.max()))
    hooks.remove()
    agree = same / max(1, rows)
    return {"trace": os.path.basename(trace_path), "steps_checked": len(chosen), "token_layer_rows": rows,
            "same_expert_set": round(agree, 6), "max_gate_weight_diff": round(wmax, 6),
            "passed": bool(agree >= tolerance and wmax < 5e-3)}


def cmd_consistency(a):
    import torch
    from record import load_model
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_model(a.model, "float32", dev, "model")
    bad = 0
    results = []
    for tr in a.trace:
        res = consistency(model, tr, a.steps, dev)
        results.append(res)
        bad += not res["passed"]
        print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    print(f"consistency: {len(results) - bad} passed, {bad} failed")
    return 1 if bad else 0


def tiny_configs(vocab):
    """Small randomly initialised MoE configs of several families (transformers 5 classes)."""
    import transformers as tf
    common = dict(vocab_size=vocab, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                  max_position_embeddings=512, tie_word_embeddings=False)
    out = {
        "mixtral": ("MixtralForCausalLM", tf.MixtralConfig(intermediate_size=128, num_local_experts=8,
                                                           num_experts_per_tok=2, num_key_value_heads=2, **common)),
        "qwen2_moe": ("Qwen2MoeForCausalLM", tf.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=32,
                                                               shared_expert_intermediate_size=64, num_experts=12,
                                                               num_experts_per_tok=4, num_key_value_heads=2, **common)),
        "qwen3_moe": ("Qwen3MoeForCausalLM", tf.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32,
                                                               num_experts=16, num_experts_per_tok=4, norm_topk_prob=True,
                                                               num_key_value_heads=2, head_dim=24, **common)),
        "olmoe": ("OlmoeForCausalLM", tf.OlmoeConfig(intermediate_size=32, num_experts=16, num_experts_per_tok=4,
                                                     num_key_value_heads=4, **common)),
        "deepseek_v3": ("DeepseekV3ForCausalLM", tf.DeepseekV3Config(
            intermediate_size=128, moe_intermediate_size=32, first_k_dense_replace=1, n_routed_experts=16,
            num_experts_per_tok=4, n_shared_experts=1, n_group=4, topk_group=2, num_key_value_heads=4,
            q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
            rope_interleave=False, **common)),
    }
    draft = tf.MistralConfig(intermediate_size=128, num_key_value_heads=2, sliding_window=None, **common)
    return out, draft


def cmd_arch_check(a):
    import shutil
    import torch
    import transformers as tf
    import record
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokjson = os.path.join(a.tokenizer, "tokenizer.json") if os.path.isdir(a.tokenizer) else a.tokenizer
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(tokjson).get_vocab_size()
    os.makedirs(a.out, exist_ok=True)
    prompts = os.path.join(a.out, "prompts.jsonl")
    with open(prompts, "w") as f:
        f.write(json.dumps({"id": "p0", "text": "def main(argv):\n    for name in argv:\n        print(name)\n"}) + "\n")
        f.write(json.dumps({"id": "p1", "text": "And God said, Let there be light: and there was light."}) + "\n")
    configs, dcfg = tiny_configs(vocab)

    def save(model, d):
        model.save_pretrained(d)
        shutil.copy(tokjson, os.path.join(d, "tokenizer.json"))

    torch.manual_seed(a.seed)
    draft_dir = os.path.join(a.out, "draft")
    save(tf.MistralForCausalLM(dcfg), draft_dir)
    results = {}
    bad = 0
    for fam, (cls_name, cfg) in configs.items():
        res = {"class": cls_name}
        t0 = time.time()
        try:
            torch.manual_seed(a.seed)
            model = getattr(tf, cls_name)(cfg).eval()
            d = os.path.join(a.out, fam)
            save(model, d)
            from moe_hooks import Layout
            res["layout"] = Layout(model).describe()
            for mode in ("decode", "sd"):
                out = os.path.join(a.out, f"{fam}-{mode}.trace.safetensors")
                argv = ["--model", d, "--prompts", prompts, "--mode", mode, "--max-new-tokens", "12",
                        "--prompt-tokens", "16", "--ignore-eos", "--channels-in-prefill", "--hidden", "layer_output",
                        "--model-name", f"random-{fam}", "-o", out, "--quiet", "--device", dev]
                if mode == "sd":
                    argv += ["--draft", draft_dir, "--gamma", "3"]
                rc = record.main(argv)
                if rc != 0:
                    raise RuntimeError(f"record.py {mode} exited {rc}")
                errs = validate_trace(out)
                if errs:
                    raise RuntimeError(f"{out}: {errs}")
                model_dev = record.load_model(d, "float32", dev, "model")
                c = consistency(model_dev, out, 8, dev)
                res[mode] = {"trace": os.path.basename(out), "valid": True, "consistency": c,
                             "channels": [ch["name"] for ch in mt.read(out).channels]}
                if not c["passed"]:
                    raise RuntimeError(f"{out}: routing differs on re-run: {c}")
            sa, sb = (final_sequences(mt.read(os.path.join(a.out, f"{fam}-{m}.trace.safetensors"))) for m in ("decode", "sd"))
            res["sd_equals_greedy"] = all(sa[r][:min(len(sa[r]), len(sb[r]))] == sb[r][:min(len(sa[r]), len(sb[r]))]
                                          for r in sa)
            res["passed"] = True
        except Exception as e:  # noqa: BLE001 - report every family, then fail overall
            import traceback
            res["passed"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            bad += 1
        res["seconds"] = round(time.time() - t0, 1)
        results[fam] = res
        print(f"arch-check {fam}: {'ok' if res['passed'] else 'FAIL ' + res['error']}", flush=True)
    with open(os.path.join(a.out, "arch_check.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"arch-check: {len(results) - bad} passed, {bad} failed")
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("validate", help="check traces against the format rules (numpy only)")
    p.add_argument("traces", nargs="+")
    p.add_argument("--allow-generated", action="store_true", help="accept synthetic traces (generated: true)")
    p = sub.add_parser("same-output", help="two traces of the same prompts produce the same tokens (numpy only)")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("consistency", help="re-run the model on recorded tokens and compare the routing")
    p.add_argument("--model", required=True)
    p.add_argument("--trace", action="append", required=True)
    p.add_argument("--steps", type=int, default=12, help="steps re-run per trace (default 12)")
    p.add_argument("--device")
    p.add_argument("--json", help="write the results as JSON")
    p = sub.add_parser("arch-check", help="random small models of five MoE families through the recorder")
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.json (or the file)")
    p.add_argument("--out", required=True)
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=2026)
    a = ap.parse_args(argv)
    for path in getattr(a, "traces", []) + [x for x in (getattr(a, "a", None), getattr(a, "b", None)) if x]:
        if not os.path.isfile(path):
            print(f"test_record.py: error: {path}: no such file", file=sys.stderr)
            return 2
    return {"validate": cmd_validate, "same-output": cmd_same_output, "consistency": cmd_consistency,
            "arch-check": cmd_arch_check}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
