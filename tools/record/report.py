#!/usr/bin/env python3
"""Summarise recorded traces: speculative-decoding acceptance, the recall of each prediction
channel per MoE layer beside a random guess, and how differently the experts are used on two
domains. numpy only.

  python3 tools/record/report.py traces/real/*.trace.safetensors --markdown out.md --json out.json

Definitions (per trace):
  acceptance   accepted drafts / proposed drafts over all verify steps.
  recall       for each prediction (a token at a layer): |candidates & true experts| / top_k,
               summed over predictions and divided per layer (the definition of
               `moesched-trace stats`). random = candidates / experts, the expected recall of
               guessing that many distinct experts uniformly.
  step recall  draft_gate only: per verify step and layer, the union of the candidates over the
  (union)      drafted tokens against the union of the true experts of all the step's tokens
               (what an SP-MoE prefetch of the whole draft window covers), with the mean size of
               that union.
  domain TV    for two traces of the same model, mode and gamma but different datasets: the
               total-variation distance between their expert-usage distributions, per layer,
               averaged (0 = same usage, 1 = disjoint experts).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402


def channel_recall(t, ch):
    L, K = t.meta["model"]["moe_layers"], t.meta["model"]["top_k"]
    first = t.step_first_token()
    steps, layers, toks = (ch[k].astype(np.int64) for k in ("step", "layer", "token"))
    if (toks < 0).any():
        raise ValueError(f"channel {ch['name']}: whole-step predictions are not handled by this report")
    rows = first[steps] + toks
    truth = t.routing_experts[rows, layers].astype(np.int64)  # [N, K]
    cand = ch["experts"].astype(np.int64)
    hits = (cand[:, :, None] == truth[:, None, :]).any(-1).sum(-1)  # padding never matches a real id
    per_layer = []
    for l in range(L):
        sel = layers == l
        per_layer.append(float(hits[sel].sum() / (sel.sum() * K)) if sel.any() else None)
    return float(hits.sum() / (len(hits) * K)), per_layer


def draft_union_recall(t, ch):
    L = t.meta["model"]["moe_layers"]
    first = t.step_first_token()
    steps, layers = ch["step"].astype(np.int64), ch["layer"].astype(np.int64)
    cand = ch["experts"].astype(np.int64)
    hit = tot = size = n = 0
    pad = 0xFF if ch["experts"].dtype == np.uint8 else 0xFFFF
    for (s, l) in sorted(set(zip(steps.tolist(), layers.tolist()))):
        sel = (steps == s) & (layers == l)
        pred = set(cand[sel].ravel().tolist()) - {pad}
        true = set(t.routing_experts[first[s]:first[s + 1], l].ravel().tolist())
        hit += len(pred & true)
        tot += len(true)
        size += len(pred)
        n += 1
    del L
    return (hit / tot if tot else None), (size / n if n else None)


def usage(t):
    L, E = t.meta["model"]["moe_layers"], t.meta["model"]["experts_per_layer"]
    u = np.zeros((L, E))
    for l in range(L):
        u[l] = np.bincount(t.routing_experts[:, l].astype(np.int64).ravel(), minlength=E)
    return u / u.sum(1, keepdims=True)


def summarise(path):
    t = mt.read(path, mmap=False)
    m = t.meta["model"]
    p = t.meta.get("provenance", {})
    v = t.step_phase == 2
    out = {"file": os.path.basename(path), "model": m["name"], "dataset": t.meta.get("dataset"),
           "mode": p.get("mode"), "gamma": p.get("gamma", 0), "requests": t.meta["request_count"],
           "steps": int(len(t.step_tokens)), "tokens": int(t.step_tokens.sum()),
           "emitted": int(np.where(v, t.step_accepted.astype(np.int64) + 1, 1).sum()),
           "bytes": os.path.getsize(path), "experts": m["experts_per_layer"], "top_k": m["top_k"],
           "layers": m["moe_layers"], "channels": {}}
    if v.any():
        out["verify_steps"] = int(v.sum())
        out["acceptance"] = float(t.step_accepted[v].sum() / t.step_draft_len[v].sum())
        out["mean_accepted"] = float(t.step_accepted[v].mean())
    for ch in t.channels:
        total, per_layer = channel_recall(t, ch)
        c = {"predictions": int(len(ch["step"])), "candidates": int(ch["max_candidates"]), "recall": total,
             "recall_per_layer": per_layer, "random": ch["max_candidates"] / m["experts_per_layer"]}
        if ch["name"] == "draft_gate":
            c["step_union_recall"], c["step_union_size"] = draft_union_recall(t, ch)
        out["channels"][ch["name"]] = c
    return out, usage(t)


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--json", help="write everything as JSON")
    ap.add_argument("--markdown", help="write the tables as Markdown (default: print them)")
    a = ap.parse_args(argv)
    for path in a.traces:
        if not os.path.isfile(path):
            print(f"report.py: error: {path}: no such file", file=sys.stderr)
            return 2
    rows, usages = [], {}
    for path in a.traces:
        s, u = summarise(path)
        rows.append(s)
        usages[path] = (s, u)
    lines = ["| trace | requests | steps | tokens run | emitted | acceptance | mean accepted |",
             "|---|---|---|---|---|---|---|"]
    for s in rows:
        lines.append(f"| {s['file']} | {s['requests']} | {s['steps']} | {s['tokens']} | {s['emitted']} | "
                     f"{pct(s.get('acceptance'))}% | {s.get('mean_accepted', 0):.2f} |" if 'acceptance' in s else
                     f"| {s['file']} | {s['requests']} | {s['steps']} | {s['tokens']} | {s['emitted']} | - | - |")
    lines += ["", "Recall of the true top-k per MoE layer (%), per channel; random = candidates / experts.", ""]
    for s in rows:
        if not s["channels"]:
            continue
        L = s["layers"]
        lines.append(f"**{s['file']}** ({s['experts']} experts, top-{s['top_k']})")
        lines.append("")
        lines.append("| channel | all | " + " | ".join(f"L{l}" for l in range(L)) + " | random |")
        lines.append("|---|---|" + "---|" * L + "---|")
        for name, c in s["channels"].items():
            lines.append(f"| {name} | {pct(c['recall'])} | " + " | ".join(pct(x) for x in c["recall_per_layer"]) +
                         f" | {pct(c['random'])} |")
            if "step_union_recall" in c and c["step_union_recall"] is not None:
                lines.append(f"| {name} (step union, {c['step_union_size']:.1f} experts listed) | "
                             f"{pct(c['step_union_recall'])} | " + " | ".join("" for _ in range(L)) + " | |")
        lines.append("")
    # domain specialisation
    groups = {}
    for path, (s, u) in usages.items():
        groups.setdefault((s["model"], s["mode"], s["gamma"]), []).append((s, u))
    spec = []
    for (model, mode, gamma), items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(items) == 2 and items[0][0]["dataset"] != items[1][0]["dataset"]:
            tv = 0.5 * np.abs(items[0][1] - items[1][1]).sum(1)
            spec.append({"model": model, "mode": mode, "gamma": gamma,
                         "datasets": [items[0][0]["dataset"], items[1][0]["dataset"]],
                         "tv_per_layer": [round(float(x), 4) for x in tv], "tv_mean": round(float(tv.mean()), 4)})
    if spec:
        lines += ["Expert usage, domain against domain (total-variation distance, mean over layers):", "",
                  "| model | mode | gamma | datasets | TV mean | TV per layer |", "|---|---|---|---|---|---|"]
        for x in spec:
            lines.append(f"| {x['model']} | {x['mode']} | {x['gamma']} | {' vs '.join(x['datasets'])} | "
                         f"{x['tv_mean']:.3f} | {' '.join(f'{v:.2f}' for v in x['tv_per_layer'])} |")
    text = "\n".join(lines) + "\n"
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    else:
        print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"traces": rows, "domain_specialisation": spec}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
