#!/usr/bin/env python3
"""Train the ProMoE-style learned expert predictor from recorded hidden states.

  python3 tools/record/record.py --model M --prompts train.jsonl --mode prefill --hidden layer_output -o h.trace.safetensors
  python3 tools/record/train_predictor.py --trace h.trace.safetensors -o mlp.safetensors
  python3 tools/record/record.py --model M ... --mlp-predictor mlp.safetensors   # adds channel mlp_stride2

One 2-layer MLP per MoE layer l (l = 0 .. L-1-stride): standardise the hidden state that leaves
the decoder layer of MoE layer l (trace hidden state "layer_output"; mean and std from the
training tokens), Linear(hidden, --hidden-dim), GELU, Linear(--hidden-dim, experts); trained with
binary cross-entropy against the multi-hot set of experts that MoE layer l+stride chose for the
same token. Ranked by logit, the top candidates are the prediction. Requests whose index is 0
mod 10 (or --val-fraction of them) are held out and the held-out recall of the true top-k within
the predicted top-k is reported per layer.

--kind linear trains the pre-attention linear predictor instead (after arXiv 2511.10676): per MoE
layer l, two linear maps (no activation between them) on the input of the attention of l's decoder
layer (hidden state "attn_input", after the input norm) score layer l's own experts (stride 0 by
default); record.py --linear-predictor turns it into channel preattn_linear, usable once layer l-1
has run (layer 0's input is known before the step).

Writes a safetensors file (format "moesched-mlp-predictor": tensors l{l}.mean/std/w1/b1/w2/b2
in float32, and a "config" JSON in the metadata with "kind": "mlp" or "linear") and, with --report,
a JSON summary.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402


def fail(msg):
    print(f"train_predictor.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load(paths, source):
    xs, ys, reqs, meta = [], [], [], None
    offset = 0
    for path in paths:
        if not os.path.isfile(path):
            fail(f"--trace {path}: no such file")
        try:
            t = mt.read(path, mmap=False)
        except (mt.TraceError, KeyError, ValueError) as e:
            fail(f"--trace {path}: {e}")
        hs = [h for h in t.hidden if h["name"] == source]
        if not hs:
            fail(f"--trace {path}: no '{source}' hidden states (record with --hidden {source})")
        h = hs[0]
        m = t.meta["model"]
        if h["layers"] != list(range(m["moe_layers"])):
            fail(f"--trace {path}: hidden state '{source}' covers layers {h['layers']}, need all "
                 f"{m['moe_layers']}")
        if meta is not None and (meta["experts_per_layer"], meta["moe_layers"], meta["hidden_size"]) != \
                (m["experts_per_layer"], m["moe_layers"], h["hidden_size"]):
            fail(f"--trace {path}: model shape differs from the first trace's")
        meta = dict(m, hidden_size=h["hidden_size"])
        first = t.step_first_token()
        req_of_token = np.repeat(t.step_request.astype(np.int64), t.step_tokens.astype(np.int64))
        assert len(req_of_token) == first[-1]
        xs.append(np.asarray(h["values"], dtype=np.float32))
        ys.append(np.asarray(t.routing_experts, dtype=np.int64))
        reqs.append(req_of_token + offset)
        offset += t.meta["request_count"]
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(reqs), meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", action="append", required=True, metavar="FILE",
                    help="trace with hidden state 'layer_output' (--kind mlp) or 'attn_input' (--kind linear); "
                    "repeat for several")
    ap.add_argument("-o", "--output", required=True, metavar="FILE", help="predictor to write (.safetensors)")
    ap.add_argument("--kind", choices=("mlp", "linear"), default="mlp",
                    help="mlp: ProMoE's MLP on layer_output (default); linear: two linear maps on attn_input")
    ap.add_argument("--stride", type=int, default=None,
                    help="predict layer l+stride from layer l (default 2 for mlp, 0 for linear)")
    ap.add_argument("--hidden-dim", type=int, default=512, help="width of the MLP's hidden layer (default 512)")
    ap.add_argument("--steps", type=int, default=800, help="optimiser steps per layer (default 800)")
    ap.add_argument("--batch", type=int, default=1024, help="tokens per step (default 1024)")
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    ap.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    ap.add_argument("--val-every", type=int, default=10, help="hold out requests whose index is 0 mod N (default 10)")
    ap.add_argument("--seed", type=int, default=2026, help="seed (default 2026)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    ap.add_argument("--report", metavar="FILE", help="write a JSON summary (per-layer held-out recall, sizes, time)")
    a = ap.parse_args(argv)
    if a.stride is None:
        a.stride = 2 if a.kind == "mlp" else 0
    if a.stride < (1 if a.kind == "mlp" else 0):
        fail(f"--stride {a.stride}: must be >= {1 if a.kind == 'mlp' else 0} for --kind {a.kind}")
    source = "layer_output" if a.kind == "mlp" else "attn_input"
    for name in ("hidden_dim", "steps", "batch", "val_every"):
        if getattr(a, name) < 1:
            fail(f"--{name.replace('_', '-')} {getattr(a, name)}: must be >= 1")

    import torch
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(a.seed)
    t0 = time.time()
    X, Y, R, meta = load(a.trace, source)
    L, E, K, H = meta["moe_layers"], meta["experts_per_layer"], meta["top_k"], meta["hidden_size"]
    if L <= a.stride:
        fail(f"--stride {a.stride}: the model has only {L} MoE layers")
    val = (R % a.val_every) == 0
    if val.all() or not val.any():
        fail(f"--val-every {a.val_every}: leaves {int((~val).sum())} training and {int(val.sum())} held-out tokens "
             f"(need both; the traces hold {int(R.max()) + 1} requests)")
    Xt = torch.from_numpy(X).to(dev)
    Yt = torch.from_numpy(Y).to(dev)
    tr_idx = torch.from_numpy(np.nonzero(~val)[0]).to(dev)
    va_idx = torch.from_numpy(np.nonzero(val)[0]).to(dev)
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    tensors, per_layer = {}, []
    for src in range(L - a.stride):
        tgt = src + a.stride
        x_tr = Xt[tr_idx, src]
        mean = x_tr.mean(0)
        std = x_tr.std(0).clamp_min(1e-4)
        target = torch.zeros(len(Xt), E, device=dev)
        target.scatter_(1, Yt[:, tgt], 1.0)
        middle = torch.nn.GELU() if a.kind == "mlp" else torch.nn.Identity()
        net = torch.nn.Sequential(torch.nn.Linear(H, a.hidden_dim), middle,
                                  torch.nn.Linear(a.hidden_dim, E)).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
        for _ in range(a.steps):
            b = tr_idx[torch.randint(len(tr_idx), (a.batch,), device=dev, generator=gen)]
            z = (Xt[b, src] - mean) / std
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z), target[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            def recall(idx):
                z = (Xt[idx, src] - mean) / std
                pred = torch.topk(net(z), K, dim=1).indices
                hit = torch.zeros(len(idx), E, device=dev).scatter_(1, pred, 1.0)
                return float((hit * target[idx]).sum() / (len(idx) * K))
            per_layer.append({"source_layer": src, "target_layer": tgt, "train_recall": recall(tr_idx),
                              "heldout_recall": recall(va_idx), "final_loss": float(loss)})
        w1, w2 = net[0], net[2]
        for k, v in (("mean", mean), ("std", std), ("w1", w1.weight), ("b1", w1.bias), ("w2", w2.weight), ("b2", w2.bias)):
            tensors[f"l{src}.{k}"] = ("F32", v.detach().float().cpu().numpy())
        print(f"train_predictor: layer {src} -> {tgt}: held-out recall@{K} {per_layer[-1]['heldout_recall']:.3f} "
              f"(train {per_layer[-1]['train_recall']:.3f})", file=sys.stderr)
    params = (H * a.hidden_dim + a.hidden_dim + a.hidden_dim * E + E) * (L - a.stride)
    config = {"kind": a.kind, "stride": a.stride, "source_layers": list(range(L - a.stride)), "hidden_state": source,
              "hidden_size": H, "experts": E, "top_k": K, "moe_layers": L, "hidden_dim": a.hidden_dim,
              "model": meta["name"], "trained_on": [os.path.basename(p) for p in a.trace],
              "train_tokens": int((~val).sum()), "heldout_tokens": int(val.sum()), "steps": a.steps,
              "batch": a.batch, "lr": a.lr, "seed": a.seed, "parameters": params, "per_layer": per_layer}
    mt.write_safetensors(a.output, tensors, {"format": "moesched-mlp-predictor", "config": json.dumps(config)})
    config["seconds"] = round(time.time() - t0, 2)
    if a.report:
        with open(a.report, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    mean_rec = np.mean([p["heldout_recall"] for p in per_layer])
    print(f"train_predictor: wrote {a.output}: {L - a.stride} layers, {params} parameters, mean held-out "
          f"recall {mean_rec:.3f}, {config['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
