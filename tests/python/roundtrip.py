"""C++ -> Python -> C++ round trip of a trace (run by ctest: packaging of the Python module).

usage: roundtrip.py TOOL WORKDIR PYTHON_MODULE_DIR
"""
import os
import subprocess
import sys

tool, work, moddir = sys.argv[1:4]
sys.path.insert(0, moddir)
import numpy as np  # noqa: E402

import moesched_trace as mt  # noqa: E402

os.makedirs(work, exist_ok=True)
a = os.path.join(work, "cpp.trace.safetensors")
b = os.path.join(work, "python.trace.safetensors")
subprocess.run([tool, "write", a], check=True)

t = mt.read(a)
# spot checks against what the C++ side wrote
assert t.meta["model"] == {"name": "roundtrip", "moe_layers": 4, "experts_per_layer": 300, "top_k": 3}, t.meta["model"]
assert t.meta["request_ids"] == ["alpha", "beta"]
assert t.meta["notes"] == "unicode survives: \u00e9\u2192"
assert t.routing_experts.dtype == np.uint16
assert t.routing_experts.shape == (int(t.step_tokens.sum()), 4, 3)
assert (t.routing_experts[:, :, 1] == t.routing_experts[:, :, 0] + 1).all()
assert list(mt.PHASES[int(p)] for p in t.step_phase) == ["prefill", "verify", "verify", "verify", "prefill", "decode"]
assert list(t.emitted_tokens()) == [1, 1, 2, 3, 1, 1]
assert t.step_first_token()[-1] == t.routing_experts.shape[0]
assert np.allclose(t.routing_weights[0, 0], [0.5, 0.25, 0.125])
scored = t.channels[0]
assert scored["name"] == "scored" and scored["experts"].shape == (24, 4)
assert (scored["experts"][:, 2:] == 0xFFFF).all(), "padding"
assert t.hidden[0]["values"].shape == (t.routing_experts.shape[0], 2, 5)

mt.write(b, t)
r = subprocess.run([tool, "compare", a, b], capture_output=True, text=True)
print(r.stdout.strip())
if r.returncode != 0:
    sys.exit(f"round trip failed: {r.stdout} {r.stderr}")
with open(a, "rb") as fa, open(b, "rb") as fb:
    print("byte-identical" if fa.read() == fb.read() else "same content, different bytes")
print("1 passed, 0 failed")
