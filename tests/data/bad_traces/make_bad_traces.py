"""Writes the corpus of malformed traces that tests/CMakeLists.txt checks one by one (and that
seeds the fuzzer). Deterministic; run with /usr/bin/python3 (numpy) from this folder:
    /usr/bin/python3 make_bad_traces.py
Each case is (file, expected message regex); expected.txt lists them for ctest."""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "python"))
import moesched_trace as mt  # noqa: E402


def base():
    """A valid trace: 2 MoE layers, 4 experts, top-2; prefill of 2 tokens then a verify step."""
    t = mt.Trace({"format_version": 1, "model": {"name": "bad-corpus", "moe_layers": 2, "experts_per_layer": 4, "top_k": 2},
                  "source": "make_bad_traces.py", "dataset": "", "notes": "generated for tests", "generated": True,
                  "request_count": 1, "channels": [], "hidden_states": [], "provenance": {}})
    t.step_request = np.array([0, 0], np.uint32)
    t.step_phase = np.array([0, 2], np.uint8)
    t.step_tokens = np.array([2, 3], np.uint32)
    t.step_draft_len = np.array([0, 2], np.uint16)
    t.step_accepted = np.array([0, 1], np.uint16)
    t.routing_experts = np.array([[[0, 1], [2, 3]]] * 5, np.uint8)
    t.routing_weights = np.full((5, 2, 2), 0.5, np.float16)
    return t


def raw(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def save(name, blob):
    with open(name, "wb") as f:
        f.write(blob)


cases = []


def case(name, regex, blob):
    save(name, blob)
    cases.append((name, regex))


mt.write("valid.trace.safetensors", base())
good = open("valid.trace.safetensors", "rb").read()
case("truncated_length.st", "truncated: 5 bytes", good[:5])
case("header_beyond_file.st", "header length' = [0-9]+: exceeds", struct.pack("<Q", 10**6) + good[8:100])
case("truncated_data.st", "end is beyond the data buffer", good[:-7])
case("header_not_json.st", "not valid JSON", struct.pack("<Q", 9) + b"{not json")
bad_utf8 = b'{"\xff\xfe": 1}'
case("header_not_utf8.st", "not valid JSON \\(or not UTF-8\\)", struct.pack("<Q", len(bad_utf8)) + bad_utf8)
case("unknown_dtype.st", "field 'x.dtype' = \"Q9\": unknown dtype", raw({"x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"))
case("overlapping.st", "overlaps tensor", raw({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                               "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 8))
case("out_of_range.st", "end is beyond the data buffer", raw({"a": {"dtype": "U32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8))
case("size_mismatch.st", "needs 12", raw({"a": {"dtype": "U32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8))
case("not_a_trace.st", "not a moesched trace", raw({"__metadata__": {"format": "pytorch"}}))

t = base(); t.routing_experts = t.routing_experts.copy(); t.routing_experts[3, 1, 0] = 4
mt.write("expert_id_too_large.st", t); cases.append(("expert_id_too_large.st", "routing_experts\\[token 3, layer 1\\]' = 4: expert id must be below experts_per_layer \\(4\\)"))
t = base(); t.routing_experts = t.routing_experts.copy(); t.routing_experts[1, 0] = [2, 2]
mt.write("duplicate_expert.st", t); cases.append(("duplicate_expert.st", "routing_experts\\[token 1, layer 0\\]' = 2: expert chosen twice"))
# token counts that do not add up: write through the container so the shape check sees it
md, tensors = mt.read_safetensors("valid.trace.safetensors")
tensors["step_tokens"] = ("U32", np.array([2, 4], np.uint32))
mt.write_safetensors("token_counts.st", tensors, md); cases.append(("token_counts.st", "the steps' token counts must add up to the routing rows"))
md2 = dict(md); meta = json.loads(md2["moesched_trace"]); meta["model"]["top_k"] = 3; md2["moesched_trace"] = json.dumps(meta)
mt.write_safetensors("shape_vs_metadata.st", tensors | {"step_tokens": ("U32", np.array([2, 3], np.uint32))}, md2)
cases.append(("shape_vs_metadata.st", "routing_experts.shape' = \\[5, 2, 2\\]: expected \\[5, 2, 3\\]"))
t = base(); t.step_accepted = np.array([0, 3], np.uint16)
mt.write("accepted_above_draft.st", t); cases.append(("accepted_above_draft.st", "accepted exceeds draft_len"))
t = base(); t.step_phase = np.array([0, 9], np.uint8)
mt.write("bad_phase.st", t); cases.append(("bad_phase.st", "step_phase\\[1\\]' = 9"))
md3 = dict(md); meta = json.loads(md3["moesched_trace"]); meta["format_version"] = 7; md3["moesched_trace"] = json.dumps(meta)
mt.write_safetensors("newer_version.st", dict(mt.read_safetensors("valid.trace.safetensors")[1]), md3)
cases.append(("newer_version.st", "format_version' = 7: written by a newer moesched"))

with open("expected.txt", "w") as f:
    f.write("# file<TAB>regex the error message must match (written by make_bad_traces.py)\n")
    for name, regex in cases:
        f.write(f"{name}\t{regex}\n")
print(f"{len(cases)} bad traces written")
