"""moesched_trace.from_routing: numpy arrays -> a trace the C++ tools accept (run by ctest).

usage: from_routing.py MOESCHED_TRACE WORKDIR PYTHON_MODULE_DIR
"""
import doctest
import os
import subprocess
import sys

tool, work, moddir = sys.argv[1:4]
sys.path.insert(0, moddir)
import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402

os.makedirs(work, exist_ok=True)
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")


def validate(path):
    r = subprocess.run([tool, "validate", path], capture_output=True, text=True)
    return r.returncode == 0 and ": ok (" in r.stdout, r.stdout.strip()


def raises(fn, text):
    try:
        fn()
    except mt.TraceError as e:
        return text in str(e), str(e)
    return False, "no TraceError"


# 1. every feature: a prompt, a decode step, a verify step (draft 2, 1 accepted), a second request;
#    300 experts (U16 ids), weights, token ids and positions
T, L, K, E = 9, 3, 2, 300
ids = np.zeros((T, L, K), dtype=np.int64)
for t in range(T):
    for layer in range(L):
        ids[t, layer] = [(7 * t + 3 * layer) % E, (7 * t + 3 * layer + 150) % E]
weights = np.full((T, L, K), 0.5, dtype=np.float32)
weights[:, :, 0] = 0.75
weights[:, :, 1] = 0.25
steps = [(0, "prefill", 3), (0, "decode", 1), (0, "verify", 3, 2, 1), {"request": 1, "phase": 0, "tokens": 2}]
t = mt.from_routing(ids, weights, steps=steps, model={"name": "toy", "moe_layers": L, "experts_per_layer": E, "top_k": K},
                    request_ids=["alpha", "beta"], token_ids=np.arange(T) + 100, positions=[0, 1, 2, 3, 4, 5, 6, 0, 1])
path = os.path.join(work, "features.trace.safetensors")
mt.write(path, t)
ok, out = validate(path)
check(ok, f"moesched-trace validate: {out}")
info = subprocess.run([tool, "info", path], capture_output=True, text=True).stdout
check("steps       4 (prefill 2, decode 1, verify 1)" in info, f"info steps line:\n{info}")
check("tokens      9 routed, 5 emitted" in info, "emitted tokens: two prefills and a decode step emit 1 each, the verify step accepting 1 emits 2")
check("weights yes, token ids yes, positions yes" in info, "optional arrays")
check("routing_experts  U16" in info, "U16 ids for 300 experts")
back = mt.read(path)
check((back.routing_experts == ids).all(), "routing round trip")
check(np.allclose(back.routing_weights, weights), "weights round trip")
check(back.meta["request_ids"] == ["alpha", "beta"] and back.meta["model"]["name"] == "toy", "metadata")
check(list(back.step_first_token()) == [0, 3, 4, 7, 9], "step boundaries")
check(list(back.token_positions) == [0, 1, 2, 3, 4, 5, 6, 0, 1], "positions")

# 2. steps from per-token request labels and a prompt length; U8 ids; experts from the largest id
ids2 = np.stack([np.stack([[t % 4, 4 + t % 4] for _ in range(2)]) for t in range(7)])
t2 = mt.from_routing(ids2, model="toy", prompt_tokens=2, requests=["q1"] * 4 + ["q2"] * 3)
check(t2.meta["model"]["experts_per_layer"] == 8, "experts_per_layer = largest id + 1")
check(t2.meta["request_ids"] == ["q1", "q2"], "request ids from the labels")
check([mt.PHASES[int(p)] for p in t2.step_phase] == ["prefill", "decode", "decode", "prefill", "decode"], "prefill then decode steps")
check(list(t2.step_tokens) == [2, 1, 1, 2, 1] and list(t2.step_request) == [0, 0, 0, 1, 1], "step tokens and requests")
path2 = os.path.join(work, "labels.trace.safetensors")
mt.write(path2, t2)
ok, out = validate(path2)
check(ok, f"moesched-trace validate (labels): {out}")
check(t2.routing_experts.dtype == np.uint8, "U8 ids for 8 experts")

# 3. the docstring example runs as written (it writes toy.trace.safetensors here)
cwd = os.getcwd()
os.chdir(work)
try:
    doc = doctest.DocTestFinder().find(mt.from_routing)[0]
    runner = doctest.DocTestRunner()
    runner.run(doc)
    check(runner.failures == 0 and runner.tries >= 6, f"docstring example: {runner.failures} failures of {runner.tries}")
finally:
    os.chdir(cwd)
ok, out = validate(os.path.join(work, "toy.trace.safetensors"))
check(ok, f"the docstring's trace validates: {out}")

# 4. bad input is refused with the value named
bad = ids.copy()
bad[4, 1] = [9, 9]
for fn, text in (
        (lambda: mt.from_routing(bad, steps=steps, model="m", experts_per_layer=E), "ids[token 4, layer 1] = [9, 9]: an expert chosen twice"),
        (lambda: mt.from_routing(ids, steps=steps, model="m", experts_per_layer=100), "expert ids must be between 0 and experts_per_layer - 1 (99)"),
        (lambda: mt.from_routing(ids, steps=steps[:3], model="m"), "steps: their tokens add up to 7, ids has 9 tokens"),
        (lambda: mt.from_routing(ids, steps=[(0, "verify", 3, 3, 0)] + steps[1:], model="m"), "a verify step runs draft_len + 1 tokens"),
        (lambda: mt.from_routing(ids, steps=[(0, "decode", 3)] + steps[1:], model="m"), "a decode step runs exactly one token"),
        (lambda: mt.from_routing(ids, steps=[(0, "warmup", 3)] + steps[1:], model="m"), "steps[0].phase = 'warmup'"),
        (lambda: mt.from_routing(ids[0], model="m"), "ids: expected an array [tokens, moe_layers, top_k]"),
        (lambda: mt.from_routing(ids.astype(np.float32), model="m"), "expected integer expert ids"),
        (lambda: mt.from_routing(ids, np.full((T, L, K), np.inf), steps=steps, model="m"), "gate weights must be finite"),
        (lambda: mt.from_routing(ids, steps=steps, model={"name": "x", "moe_layers": 4, "experts_per_layer": E, "top_k": K}), "do not match ids"),
        (lambda: mt.from_routing(ids, model="m", requests=[0, 0, 1, 1, 0, 0, 0, 0, 0]), "requests[4] = 0: the tokens of a request must be together"),
        (lambda: mt.from_routing(ids, steps=steps, model="m", request_ids=["only-one"]), "request_ids: 1 names for 2 requests"),
        (lambda: mt.from_routing(ids, steps=steps, model="m", positions=[-1] * T), "positions: values must be between 0 and 2^32 - 1")):
    ok, msg = raises(fn, text)
    check(ok, f"expected TraceError containing {text!r}, got: {msg}")

# 5. a dump with hidden states and the model's routers (write_gates) gets its skip_gate channel
#    from `moesched-trace predict`, equal to the router applied here in numpy
rng = np.random.default_rng(11)
T5, L5, K5, E5, H5 = 10, 3, 2, 6, 8
ids5 = np.argsort(rng.random((T5, L5, E5)), axis=2)[:, :, :K5]
moe_input = rng.normal(0, 1, (T5, L5, H5)).astype(np.float16)  # exact in float16: no rounding on the way
routers = [rng.normal(0, 1, (E5, H5)).astype(np.float32) for _ in range(L5)]
steps5 = [(0, "prefill", 4)] + [(0, "decode", 1)] * 6
t5 = mt.from_routing(ids5, steps=steps5, model="toy-moe", experts_per_layer=E5, hidden={"moe_input": moe_input})
p5 = os.path.join(work, "hidden.trace.safetensors")
g5 = os.path.join(work, "gates.safetensors")
mt.write(p5, t5)
mt.write_gates(g5, routers, top_k=K5, model="toy-moe")
ok, out = validate(p5)
check(ok, f"a trace with hidden states validates: {out}")
back5 = mt.read(p5)
check(len(back5.hidden) == 1 and back5.hidden[0]["name"] == "moe_input" and
      np.array_equal(np.asarray(back5.hidden[0]["values"]), moe_input), "hidden states round trip")
def skip_gate_against(gates, out_name, want_of):
    """Runs `moesched-trace predict --channel skip_gate` with `gates`; returns (predictions, equal to
    want_of(logits), differing from the plain top-K5), or None when the tool failed."""
    out = os.path.join(work, out_name)
    r = subprocess.run([tool, "predict", p5, "--gates", gates, "--channel", "skip_gate", "-o", out], capture_output=True, text=True)
    check(r.returncode == 0, f"moesched-trace predict ({out_name}): {r.stdout}{r.stderr}")
    if r.returncode != 0:
        return None
    ch = mt.read(out).channels[0]
    first = back5.step_first_token()
    rows = same = differs = 0
    for i in range(len(ch["step"])):
        s_, layer, tok = int(ch["step"][i]), int(ch["layer"][i]), int(ch["token"][i])
        x = moe_input[first[s_] + tok, layer - 1].astype(np.float64)
        logits = routers[layer].astype(np.float64) @ x
        want = want_of(logits)
        same += int(sorted(int(e) for e in ch["experts"][i]) == want)
        differs += int(want != sorted(np.argsort(-logits, kind="stable")[:K5].tolist()))
        rows += 1
    return rows, same, differs


got = skip_gate_against(g5, "hidden+skip.trace.safetensors", lambda lg: sorted(np.argsort(-lg, kind="stable")[:K5].tolist()))
if got:
    check(got[0] == 6 * (L5 - 1) and got[1] == got[0],
          f"skip_gate: {got[0]} predictions (6 decode steps x {L5 - 1} layers), {got[1]} equal to numpy's top-{K5}")
# 6. group-limited routers (DeepSeek: n_group, topk_group): the tool's skip_gate keeps only the
#    best group's experts, as numpy does here (softmax scores, a group's score = its best)
g6 = os.path.join(work, "gates-groups.safetensors")
mt.write_gates(g6, routers, top_k=K5, model="toy-moe", n_group=3, topk_group=1)


def group_limited(logits):
    best = int(np.argmax(logits.reshape(3, E5 // 3).max(axis=1)))
    masked = np.full(E5, -np.inf)
    masked[best * 2:(best + 1) * 2] = logits[best * 2:(best + 1) * 2]
    return sorted(np.argsort(-masked, kind="stable")[:K5].tolist())


got = skip_gate_against(g6, "hidden+skip-groups.trace.safetensors", group_limited)
if got:
    check(got[1] == got[0] and got[2] > 0,
          f"skip_gate with groups: {got[1]} of {got[0]} equal to numpy's group-limited top-{K5} "
          f"({got[2]} differ from the plain top-{K5})")
for fn, text in (
        (lambda: mt.write_gates(g6, routers, top_k=K5, n_group=4), "n_group = 4"),
        (lambda: mt.write_gates(g6, routers, top_k=3, n_group=3, topk_group=1), "topk_group = 1"),
        (lambda: mt.write_gates(g6, routers, top_k=2, n_group=3, group_score="mean"), "group_score = 'mean'"),
        (lambda: mt.from_routing(ids5, steps=steps5, model="m", hidden={"moe_input": moe_input[:, :2]}), "hidden['moe_input']: expected an array"),
        (lambda: mt.from_routing(ids5, steps=steps5, model="m", hidden={"moe_input": moe_input * np.inf}), "must be finite"),
        (lambda: mt.write_gates(g5, [routers[0], routers[1][:, :4]], top_k=2), "weights[1]: shape [6, 4]"),
        (lambda: mt.write_gates(g5, routers, top_k=7), "top_k = 7"),
        (lambda: mt.write_gates(g5, routers, top_k=2, biases=[np.zeros(5)] * L5), "biases[0]: shape [5]")):
    ok, msg = raises(fn, text)
    check(ok, f"expected TraceError containing {text!r}, got: {msg}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
