#!/usr/bin/env python3
"""CPU test of the recorder's bookkeeping with small PyTorch models written here in the shape of
the transformers 5 MoE layout (no transformers needed; torch and numpy are).

Checks, on a mock MoE target and a mock dense draft with a real KV cache and causal attention:
  - decode and speculative-decoding traces pass the format checks of test_record.validate_trace;
  - speculative decoding (gamma 1, 3, 5) emits exactly the tokens of greedy decoding;
  - the recorded routing equals a no-cache re-run on the same tokens (test_record.consistency);
  - channel predictions sit where the README says: skip_gate at layers 1..L-1 with
    available_after = layer - 1, draft_gate for verify tokens 0..gamma-1 with available_after -1;
  - an SD trace's accepted counts agree with the tokens the verify steps produced.

  python3 tools/record/test_mock_models.py      # prints "N passed, 0 failed"; exit 1 on failure,
                                                # 77 (ctest's usual SKIP_RETURN_CODE) without torch
"""

import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("test_mock_models.py: torch is not installed; skipped (exit code 77)")
    sys.exit(77)

import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402


class Cache:
    def __init__(self, layers):
        self.k = [None] * layers
        self.v = [None] * layers

    def get_seq_length(self):
        return 0 if self.k[0] is None else self.k[0].shape[1]

    def crop(self, n):
        if n < 0:  # like transformers: a negative count removes that many entries
            n = self.get_seq_length() + n
        self.k = [x[:, :n] for x in self.k]
        self.v = [x[:, :n] for x in self.v]


class Router(torch.nn.Module):
    def __init__(self, h, e, k):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(e, h) * 0.5)
        self.top_k = k

    def forward(self, x):
        logits = F.linear(x, self.weight)
        probs = logits.float().softmax(-1)
        w, i = torch.topk(probs, self.top_k, dim=-1)
        return logits, w / w.sum(-1, keepdim=True), i


class Experts(torch.nn.Module):
    def __init__(self, h, e):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(e, h, h) / h ** 0.5)

    def forward(self, x, top_k_index, top_k_weights):
        out = torch.zeros_like(x)
        for j in range(top_k_index.shape[1]):
            out += top_k_weights[:, j:j + 1] * torch.einsum("nh,nhg->ng", x, self.w[top_k_index[:, j]])
        return out


class Moe(torch.nn.Module):
    def __init__(self, h, e, k):
        super().__init__()
        self.gate = Router(h, e, k)
        self.experts = Experts(h, e)

    def forward(self, hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)
        _, w, i = self.gate(x)
        return self.experts(x, i, w).reshape(b, s, h)


class Dense(torch.nn.Module):
    def __init__(self, h):
        super().__init__()
        self.w = torch.nn.Linear(h, h)

    def forward(self, x):
        return torch.tanh(self.w(x))


class Attention(torch.nn.Module):
    def __init__(self, h, idx):
        super().__init__()
        self.q, self.kp, self.vp = (torch.nn.Linear(h, h, bias=False) for _ in range(3))
        self.idx = idx

    def forward(self, x, cache):
        q, k, v = self.q(x), self.kp(x), self.vp(x)
        if cache.k[self.idx] is not None:
            k = torch.cat([cache.k[self.idx], k], 1)
            v = torch.cat([cache.v[self.idx], v], 1)
        cache.k[self.idx], cache.v[self.idx] = k, v
        n, m = x.shape[1], k.shape[1]
        mask = torch.ones(n, m, dtype=torch.bool).tril(m - n)
        att = (q @ k.transpose(1, 2) / x.shape[-1] ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1)
        return att @ v


class Layer(torch.nn.Module):
    def __init__(self, h, mlp, idx):
        super().__init__()
        self.self_attn = Attention(h, idx)
        self.mlp = mlp

    def forward(self, x, cache):
        x = x + self.self_attn(F.layer_norm(x, x.shape[-1:]) * 1.5, cache)
        x = x + self.mlp(F.layer_norm(x, x.shape[-1:]))
        return x


class Model(torch.nn.Module):
    def __init__(self, vocab, h, layers, moe=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = types.SimpleNamespace(hidden_size=h, num_hidden_layers=layers, eos_token_id=None,
                                            num_experts_per_tok=moe[1] if moe else None)
        self.model = torch.nn.Module()
        self.model.embed = torch.nn.Embedding(vocab, h)
        self.model.layers = torch.nn.ModuleList(
            [Layer(h, Moe(h, moe[0], moe[1]) if moe and i != 1 else Dense(h), i) for i in range(layers)])
        self.head = torch.nn.Linear(h, vocab)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        cache = past_key_values or Cache(len(self.model.layers))
        x = self.model.embed(input_ids)
        for layer in self.model.layers:
            x = layer(x, cache)
        return types.SimpleNamespace(logits=self.head(x) * 3.0, past_key_values=cache)


def args_for(mode, gamma, out):
    return types.SimpleNamespace(
        model="mock", draft="mock-draft" if mode == "sd" else None, prompts="mock", output=out, mode=mode,
        gamma=gamma, max_new_tokens=20, prompt_tokens=0, max_requests=0, ignore_eos=True, channels=None,
        mlp_predictor=None, linear_predictor=None, gates_out=None, candidates=0, channels_in_prefill=False, hidden=[], dtype="float32", device="cpu",
        model_name="mock", dataset="mock", notes="", seed=0, quiet=True, argv=["mock"])


def ranked(scores, c):
    """Top-c experts per row by score, ties to the lower id (what moesched-trace predict computes)."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)
    top = order[:, :c]
    return top, np.take_along_axis(scores, top, 1)


def softmax(x):
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def hidden_state_checks(record, target, draft, prompts, tmp, check):
    """The hidden states and weight files the C++ predictors read reproduce the recorded channels:
    skip_gate and draft_gate from --gates-out and moe_input / draft_moe_input, preattn_linear from
    a linear predictor file and attn_input (recomputed here in numpy from the files alone)."""
    L, E, H, K = 3, 6, 24, 2
    rng = np.random.default_rng(7)
    lin = {}
    for m in range(L):
        lin.update({f"l{m}.mean": ("F32", rng.normal(0, 0.1, H).astype(np.float32)),
                    f"l{m}.std": ("F32", rng.uniform(0.5, 1.5, H).astype(np.float32)),
                    f"l{m}.w1": ("F32", rng.normal(0, 0.3, (5, H)).astype(np.float32)),
                    f"l{m}.b1": ("F32", rng.normal(0, 0.1, 5).astype(np.float32)),
                    f"l{m}.w2": ("F32", rng.normal(0, 0.5, (E, 5)).astype(np.float32)),
                    f"l{m}.b2": ("F32", rng.normal(0, 0.1, E).astype(np.float32))})
    import json
    cfg = {"kind": "linear", "stride": 0, "source_layers": list(range(L)), "hidden_state": "attn_input",
           "hidden_size": H, "experts": E, "top_k": K, "moe_layers": L, "hidden_dim": 5}
    lin_path = os.path.join(tmp, "linear.safetensors")
    mt.write_safetensors(lin_path, lin, {"format": "moesched-mlp-predictor", "config": json.dumps(cfg)})
    out = os.path.join(tmp, "hidden.trace.safetensors")
    gates_path = os.path.join(tmp, "gates.safetensors")
    a = args_for("sd", 3, out)
    a.hidden = ["moe_input", "layer_output", "attn_input", "draft_moe_input"]
    a.linear_predictor = lin_path
    a.gates_out = gates_path
    rec = record.Recorder(a, target, draft, None, lambda ids: "")
    for r, (_, ids) in enumerate(prompts):
        rec.run_request(r, ids)
    tr = rec.finish(prompts, 0.0)
    mt.write(out, tr)
    record.write_gates(gates_path, rec.layout, "mock")
    t = mt.read(out, mmap=False)
    hid = {h["name"]: np.asarray(h["values"], np.float32) for h in t.hidden}
    check(sorted(hid) == sorted(a.hidden) and all(v.shape == (len(t.token_ids), L, H) for v in hid.values()),
          f"hidden states stored: {[(k, v.shape) for k, v in hid.items()]}")
    md, g = mt.read_safetensors(gates_path, mmap=False)
    gcfg = json.loads(md["config"])
    check(md["format"] == "moesched-gates" and (gcfg["moe_layers"], gcfg["experts"], gcfg["hidden_size"]) == (L, E, H)
          and gcfg["scoring"] == "softmax", f"gates file config {gcfg}")
    W = [np.asarray(g[f"l{m}.weight"][1], np.float32) for m in range(L)]
    first = t.step_first_token().astype(np.int64)
    chans = {c["name"]: c for c in t.channels}
    check(sorted(chans) == ["draft_gate", "preattn_linear", "skip_gate"], f"channels {sorted(chans)}")

    def agree(name, source, weights_of, after_of):
        c = chans[name]
        rows = first[c["step"].astype(np.int64)] + c["token"].astype(np.int64)
        layers = c["layer"].astype(np.int64)
        same, worst = 0, 0.0
        for i in range(len(rows)):
            scores = weights_of(layers[i], hid[source][rows[i], layers[i] - (1 if name == "skip_gate" else 0)])
            e, sc = ranked(scores[None, :], c["experts"].shape[1])
            same += int((np.sort(e[0]) == np.sort(c["experts"][i].astype(np.int64))).all())
            worst = max(worst, float(np.abs(sc[0] - np.asarray(c["scores"][i], np.float32)).max()))
        ok_after = (c["available_after"].astype(np.int64) == after_of(layers)).all()
        check(same >= 0.98 * len(rows) and worst < 2e-2 and ok_after,
              f"{name} recomputed from '{source}' and the weight file: {same}/{len(rows)} equal sets, "
              f"max score difference {worst:.4f}, available_after ok {ok_after}")

    agree("skip_gate", "moe_input", lambda m, x: softmax((W[m] @ x)[None, :])[0], lambda ls: ls - 1)
    agree("draft_gate", "draft_moe_input", lambda m, x: softmax((W[m] @ x)[None, :])[0], lambda ls: np.full_like(ls, -1))

    def linear(m, x):
        p = {k: np.asarray(lin[f"l{m}.{k}"][1], np.float32) for k in ("mean", "std", "w1", "b1", "w2", "b2")}
        z = (x - p["mean"]) / p["std"]
        return 1 / (1 + np.exp(-(p["w2"] @ (p["w1"] @ z + p["b1"]) + p["b2"])))
    agree("preattn_linear", "attn_input", linear, lambda ls: ls - 1)
    # draft_moe_input is zero outside verify rows 0..gamma-1, and set inside them
    d = hid["draft_moe_input"]
    inside = np.zeros(len(d), bool)
    for s_ in np.nonzero(t.step_phase == 2)[0]:
        inside[first[s_]:first[s_] + int(t.step_draft_len[s_])] = True
    check(not d[~inside].any() and (np.abs(d[inside]).sum(axis=(1, 2)) > 0).all(),
          "draft_moe_input is set exactly in verify rows 0..gamma-1")


def main():
    import record
    import test_record
    vocab, h = 50, 24
    target = Model(vocab, h, 4, moe=(6, 2), seed=1).eval()   # MoE layers at decoder layers 0, 2, 3
    draft = Model(vocab, h, 4, seed=2).eval()
    # make the draft agree with the target often: share embeddings, attention and head
    with torch.no_grad():
        draft.model.embed.weight.copy_(target.model.embed.weight)
        draft.head.weight.copy_(target.head.weight)
        draft.head.bias.copy_(target.head.bias)
        for dl, tl in zip(draft.model.layers, target.model.layers):
            for name in ("q", "kp", "vp"):
                getattr(dl.self_attn, name).weight.copy_(getattr(tl.self_attn, name).weight)
    # drafts that agree always (a copy of the target) and often (the target with noisy weights),
    # so that full acceptance (the draft then catches up two tokens) and partial acceptance occur
    import copy
    twin = copy.deepcopy(target)
    noisy = copy.deepcopy(target)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.15 * p.std())
    drafts = {"dense": draft, "twin": twin, "noisy": noisy}
    prompts = [("a", [1, 2, 3, 4, 5]), ("b", [7, 8, 9]), ("c", [11, 3, 30, 4, 2, 8, 1])]
    passed = failed = 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}")

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        runs = [("decode", 0, None)] + [("sd", g, d) for d in drafts for g in (1, 3, 5)]
        for mode, gamma, dname in runs:
            out = os.path.join(tmp, f"{mode}{gamma}{dname or ''}.trace.safetensors")
            a = args_for(mode, gamma, out)
            rec = record.Recorder(a, target, drafts[dname] if mode == "sd" else None, None, lambda ids: "")
            for r, (_, ids) in enumerate(prompts):
                rec.run_request(r, ids)
            tr = rec.finish(prompts, 0.0)
            mt.write(out, tr)
            paths[(mode, gamma, dname)] = out
            errs = test_record.validate_trace(out)
            check(not errs, f"{mode}{gamma}: valid trace: {errs}")
            c = test_record.consistency(target, out, 40, "cpu")
            check(c["passed"] and c["same_expert_set"] == 1.0, f"{mode}{gamma}: consistency {c}")
            t = mt.read(out)
            names = [ch["name"] for ch in t.channels]
            check(names == (["skip_gate", "draft_gate"] if mode == "sd" else ["skip_gate"]), f"channels {names}")
            skip = t.channels[0]
            check(set(skip["layer"].tolist()) == {1, 2} and
                  (skip["available_after"].astype(int) == skip["layer"].astype(int) - 1).all(), "skip_gate layers")
            check(t.meta["model"]["moe_layers"] == 3, "dense layer 1 is not a MoE layer")
            if mode == "sd":
                dg = t.channels[1]
                check((dg["available_after"] == -1).all() and dg["token"].max() == gamma - 1 and
                      (t.step_phase[dg["step"]] == 2).all(), "draft_gate placement")
                # accepted count = longest prefix where the next step continues the drafts
                first = t.step_first_token()
                ok = True
                for s in np.nonzero(t.step_phase == 2)[0]:
                    nxt = s + 1
                    if nxt < len(t.step_tokens) and t.step_request[nxt] == t.step_request[s]:
                        p0 = int(t.token_positions[first[s]])
                        check_pos = int(t.token_positions[first[nxt]])
                        ok &= check_pos == p0 + int(t.step_accepted[s]) + 1
                check(ok, "next verify step starts after the accepted drafts")
        base = test_record.final_sequences(mt.read(paths[("decode", 0, None)]))
        for mode, g, dname in runs[1:]:
            sd = test_record.final_sequences(mt.read(paths[(mode, g, dname)]))
            same = all(sd[r][:min(len(sd[r]), len(base[r]))] == base[r][:min(len(sd[r]), len(base[r]))] for r in base)
            check(same and all(len(sd[r]) >= len(base[r]) - 1 for r in base), f"sd gamma {g} ({dname} draft) emits the greedy tokens")
            acc = mt.read(paths[(mode, g, dname)]).meta["provenance"]["acceptance_rate"]
            if dname == "twin":
                check(acc == 1.0, f"a draft equal to the target has acceptance {acc}")
                dg = mt.read(paths[(mode, g, dname)]).channels[1]
                t = mt.read(paths[(mode, g, dname)])
                first = t.step_first_token()
                rows = first[dg["step"].astype(np.int64)] + dg["token"].astype(np.int64)
                truth = t.routing_experts[rows, dg["layer"].astype(np.int64)]
                check((np.sort(truth, 1) == np.sort(dg["experts"], 1)).all(),
                      "a draft equal to the target: draft_gate predicts the target's experts exactly")
            print(f"gamma {g}, {dname} draft: acceptance {acc:.2f}")
        hidden_state_checks(record, target, noisy, prompts, tmp, check)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
