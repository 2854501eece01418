"""Read and write moesched routing traces (traces/FORMAT.md) with json + numpy only.

    import moesched_trace as mt
    t = mt.read("run.trace.safetensors")        # arrays are memory-mapped, not copied
    t.meta["model"]["top_k"]                      # metadata as a dict
    t.routing_experts.shape                       # (tokens, moe_layers, top_k)
    first = t.step_first_token()                  # where each step's tokens start
    mt.write("copy.trace.safetensors", t)         # atomic: temp file + rename
    t2 = mt.from_routing(ids, steps=[(0, "prefill", 8), (0, "decode", 1)], model="m")   # ids: [9, layers, top_k]

Channels are dicts with "name", "description", "max_candidates", "has_scores" and the arrays
"step", "layer", "token", "available_after", "experts" (padded with 0xFF / 0xFFFF) and "scores".
Tensors the format does not know must be named "extra.*"; they are kept in Trace.extra.
"""

import json
import os
import struct

import numpy as np

FORMAT = "moesched-trace"
FORMAT_VERSION = 1
PHASES = {0: "prefill", 1: "decode", 2: "verify"}

_NUMPY = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}
_SIZE = {k: v.itemsize for k, v in _NUMPY.items()}


class TraceError(ValueError):
    """A file that is not a valid trace; the message names the file, tensor and value."""


def read_safetensors(path, mmap=True):
    """Return (metadata, {name: (dtype_name, array)}) of a safetensors file.

    BF16 tensors come back as uint16 bit patterns (numpy has no bfloat16); see bf16_to_float32.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TraceError(f"{path}: truncated: {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise TraceError(f"{path}: header length {n} exceeds the file")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TraceError(f"{path}: header is not UTF-8 JSON: {e}") from None
    data_start = 8 + n
    buf = np.memmap(path, dtype=np.uint8, mode="r") if mmap and size > 0 else np.fromfile(path, dtype=np.uint8)
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        dt = info.get("dtype")
        if dt not in _NUMPY:
            raise TraceError(f"{path}: tensor '{name}': unknown dtype {dt!r}")
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * _SIZE[dt] or data_start + end > size:
            raise TraceError(f"{path}: tensor '{name}': data_offsets {[begin, end]} do not fit shape {list(shape)}")
        raw = buf[data_start + begin: data_start + end]
        tensors[name] = (dt, raw.view(_NUMPY[dt]).reshape(shape))
    return metadata, tensors


def write_safetensors(path, tensors, metadata=None):
    """Write {name: (dtype_name, array)} atomically; larger element sizes first so every tensor
    is aligned to its element size, header padded to 8 bytes."""
    order = sorted(tensors.items(), key=lambda kv: (-_SIZE[kv[1][0]], kv[0]))
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name, (dt, arr) in order:
        a = np.ascontiguousarray(arr, dtype=_NUMPY[dt])
        blob = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    tmp = str(path) + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def bf16_to_float32(bits):
    """uint16 bfloat16 bit patterns to float32."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


class Trace:
    """A routing trace in numpy arrays. See traces/FORMAT.md for every field."""

    def __init__(self, meta):
        self.meta = meta
        self.step_request = self.step_phase = self.step_tokens = None
        self.step_draft_len = self.step_accepted = None
        self.routing_experts = self.routing_weights = None
        self.token_ids = self.token_positions = None
        self.channels = []
        self.hidden = []
        self.extra = {}

    def step_first_token(self):
        """Index of each step's first token (length steps + 1, last = token count)."""
        out = np.zeros(len(self.step_tokens) + 1, dtype=np.int64)
        np.cumsum(self.step_tokens, out=out[1:])
        return out

    def emitted_tokens(self):
        """Output tokens per step: accepted + 1 for verify steps, 1 otherwise."""
        return np.where(self.step_phase == 2, self.step_accepted.astype(np.int64) + 1, 1)


def read(path, mmap=True):
    """Read a trace; raises TraceError on structural problems (the C++ reader checks values)."""
    md, t = read_safetensors(path, mmap=mmap)
    if md.get("format") != FORMAT:
        raise TraceError(f"{path}: __metadata__.format is {md.get('format')!r}, not {FORMAT!r}")
    meta = json.loads(md["moesched_trace"])
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise TraceError(f"{path}: format_version {meta['format_version']} is newer than {FORMAT_VERSION}")
    tr = Trace(meta)

    def take(name, required=True):
        if name not in t:
            if required:
                raise TraceError(f"{path}: required tensor '{name}' is missing")
            return None
        return t.pop(name)[1]

    for name in ("step_request", "step_phase", "step_tokens", "step_draft_len", "step_accepted", "routing_experts"):
        setattr(tr, name, take(name))
    for name in ("token_ids", "token_positions"):
        setattr(tr, name, take(name, required=False))
    if "routing_weights" in t:
        dt, arr = t.pop("routing_weights")
        tr.routing_weights = bf16_to_float32(arr) if dt == "BF16" else arr
    m = meta["model"]
    expect = (int(tr.step_tokens.sum()), m["moe_layers"], m["top_k"])
    if tuple(tr.routing_experts.shape) != expect:
        raise TraceError(f"{path}: routing_experts has shape {list(tr.routing_experts.shape)}, expected {list(expect)}")
    for c, desc in enumerate(meta.get("channels", [])):
        p = f"channel.{c}."
        ch = dict(desc)
        for part in ("step", "layer", "token", "available_after", "experts"):
            ch[part] = take(p + part)
        ch["scores"] = take(p + "scores", required=False)
        tr.channels.append(ch)
    for h, desc in enumerate(meta.get("hidden_states", [])):
        entry = dict(desc)
        entry["values"] = take(f"hidden.{h}")
        tr.hidden.append(entry)
    for name in list(t):
        if not name.startswith("extra."):
            raise TraceError(f"{path}: unknown tensor '{name}'")
        tr.extra[name] = t.pop(name)
    return tr


def write(path, trace):
    """Write `trace` (a Trace) atomically in the moesched-trace format."""
    m = trace.meta["model"]
    ids = "U8" if m["experts_per_layer"] <= 255 else "U16"
    tensors = {
        "step_request": ("U32", trace.step_request),
        "step_phase": ("U8", trace.step_phase),
        "step_tokens": ("U32", trace.step_tokens),
        "step_draft_len": ("U16", trace.step_draft_len),
        "step_accepted": ("U16", trace.step_accepted),
        "routing_experts": (ids, trace.routing_experts),
    }
    if trace.routing_weights is not None:
        tensors["routing_weights"] = ("F16", trace.routing_weights)
    if trace.token_ids is not None:
        tensors["token_ids"] = ("U32", trace.token_ids)
    if trace.token_positions is not None:
        tensors["token_positions"] = ("U32", trace.token_positions)
    meta = dict(trace.meta)
    meta["format_version"] = FORMAT_VERSION
    meta["channels"] = []
    for c, ch in enumerate(trace.channels):
        p = f"channel.{c}."
        meta["channels"].append({"name": ch["name"], "description": ch.get("description", ""),
                                 "max_candidates": int(ch["max_candidates"]), "has_scores": ch.get("scores") is not None})
        tensors[p + "step"] = ("U32", ch["step"])
        tensors[p + "layer"] = ("U16", ch["layer"])
        tensors[p + "token"] = ("I32", ch["token"])
        tensors[p + "available_after"] = ("I16", ch["available_after"])
        tensors[p + "experts"] = (ids, ch["experts"])
        if ch.get("scores") is not None:
            tensors[p + "scores"] = ("F16", ch["scores"])
    meta["hidden_states"] = []
    for h, hs in enumerate(trace.hidden):
        desc = {k: v for k, v in hs.items() if k != "values"}
        meta["hidden_states"].append(desc)
        tensors[f"hidden.{h}"] = (desc.get("dtype", "F16"), hs["values"])
    for name, value in trace.extra.items():
        tensors[name] = value
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "moesched_trace": json.dumps(meta, separators=(",", ":"))}
    write_safetensors(path, tensors, metadata)


def _step_tuple(i, s):
    """One `steps` entry as (request, phase code, tokens, draft_len, accepted)."""
    if isinstance(s, dict):
        unknown = set(s) - {"request", "phase", "tokens", "draft_len", "accepted"}
        if unknown:
            raise TraceError(f"steps[{i}]: unknown keys {sorted(unknown)}")
        s = (s.get("request", 0), s.get("phase", "decode"), s.get("tokens", 1), s.get("draft_len", 0), s.get("accepted", 0))
    s = tuple(s)
    if len(s) not in (3, 5):
        raise TraceError(f"steps[{i}] = {s!r}: expected (request, phase, tokens) or (request, phase, tokens, draft_len, accepted)")
    request, phase, tokens = s[:3]
    draft_len, accepted = s[3:] if len(s) == 5 else (0, 0)
    codes = {v: k for k, v in PHASES.items()}
    if isinstance(phase, str):
        if phase not in codes:
            raise TraceError(f"steps[{i}].phase = {phase!r}: expected one of {sorted(codes)} (or 0, 1, 2)")
        phase = codes[phase]
    for name, v in (("request", request), ("phase", phase), ("tokens", tokens), ("draft_len", draft_len), ("accepted", accepted)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TraceError(f"steps[{i}].{name} = {v!r}: expected an integer")
    request, phase, tokens, draft_len, accepted = (int(v) for v in (request, phase, tokens, draft_len, accepted))
    if phase not in PHASES:
        raise TraceError(f"steps[{i}].phase = {phase}: expected 0 (prefill), 1 (decode) or 2 (verify)")
    if not 0 <= request < 2**32:
        raise TraceError(f"steps[{i}].request = {request}: must be between 0 and 2^32 - 1")
    why = None
    if tokens < 1:
        why = "a step must run at least one token"
    elif phase == 2:
        if draft_len < 1:
            why = "a verify step needs draft_len >= 1"
        elif tokens != draft_len + 1:
            why = "a verify step runs draft_len + 1 tokens"
        elif not 0 <= accepted <= draft_len:
            why = "accepted must be between 0 and draft_len"
        elif draft_len > 65535:
            why = "draft_len must be below 65536"
    elif draft_len != 0 or accepted != 0:
        why = "only verify steps have draft_len or accepted"
    elif phase == 1 and tokens != 1:
        why = "a decode step runs exactly one token"
    if why:
        raise TraceError(f"steps[{i}] = (request {request}, {PHASES[phase]}, tokens {tokens}, draft_len {draft_len}, accepted {accepted}): {why}")
    return request, phase, tokens, draft_len, accepted


def _per_token(name, values, tokens):
    a = np.asarray(values)
    if a.shape != (tokens,) or not np.issubdtype(a.dtype, np.integer):
        raise TraceError(f"{name}: expected {tokens} integers (one per token), got shape {list(a.shape)} of {a.dtype}")
    if tokens and (a.min() < 0 or a.max() >= 2**32):
        raise TraceError(f"{name}: values must be between 0 and 2^32 - 1 (got {a.min()}..{a.max()})")
    return a.astype(np.uint32)


# The hidden states moesched-trace predict reads (tools/record/record.py --hidden writes them).
HIDDEN_STATES = {
    "moe_input": "input of each MoE block (after the post-attention norm)",
    "layer_output": "output of the decoder layer holding each MoE layer (the residual stream after it)",
    "attn_input": "input of the attention of the decoder layer holding each MoE layer (after its input norm)",
    "draft_moe_input": "the draft's feed-forward input at the decoder layer matching each MoE layer, for verify-step "
                       "tokens 0..gamma-1 (the tokens the draft processed); zero in every other row",
}


def write_gates(path, weights, *, top_k, model="", biases=None, score_biases=None, source=None, n_group=1,
                topk_group=None, group_score=None):
    """Write a model's routers as a "moesched-gates" safetensors file (what `moesched-trace predict`
    reads for skip_gate and draft_gate; record.py --gates-out writes the same).

    weights: one [experts, hidden_size] array per MoE layer (the router's weight: logits = W x + b).
    biases: optional, one [experts] array per layer added to the logits. score_biases: optional,
    one [experts] array per layer for DeepSeek-V3-style routers (sigmoid scores plus this bias);
    then scoring is "sigmoid", else "softmax". Shapes and finiteness are checked.
    n_group, topk_group: group-limited routing (DeepSeek-V2/V3, the HF config's fields of the same
    names): the experts form n_group equal groups in id order and only the topk_group best groups'
    experts are chosen; group_score "max" (a group's best score; V2, the default with softmax) or
    "top2_sum" (its two best; V3, the default with sigmoid).

    >>> import numpy as np, moesched_trace as mt
    >>> mt.write_gates("gates.safetensors", [np.eye(4, 8, dtype=np.float32)] * 2, top_k=2, model="toy-moe")
    """
    ws = [np.asarray(w, dtype=np.float32) for w in weights]
    if not ws:
        raise TraceError("weights: no MoE layers")
    if ws[0].ndim != 2 or min(ws[0].shape) < 1:
        raise TraceError(f"weights[0]: shape {list(ws[0].shape)}: a router must be [experts, hidden_size]")
    E, H = (int(d) for d in ws[0].shape)
    for m, w in enumerate(ws):
        if w.shape != (E, H):
            raise TraceError(f"weights[{m}]: shape {list(w.shape)}: every layer's router must be [{E}, {H}] like layer 0's")
        if not np.isfinite(w).all():
            raise TraceError(f"weights[{m}]: not finite")
    if not 1 <= int(top_k) <= E:
        raise TraceError(f"top_k = {top_k}: must be between 1 and the expert count ({E})")
    tensors = {f"l{m}.weight": ("F32", w) for m, w in enumerate(ws)}
    for label, arrays, suffix in (("biases", biases, "bias"), ("score_biases", score_biases, "score_bias")):
        if arrays is None:
            continue
        if len(arrays) != len(ws):
            raise TraceError(f"{label}: {len(arrays)} arrays for {len(ws)} layers")
        for m, b in enumerate(arrays):
            b = np.asarray(b, dtype=np.float32)
            if b.shape != (E,) or not np.isfinite(b).all():
                raise TraceError(f"{label}[{m}]: shape {list(b.shape)}: must be [{E}] and finite")
            tensors[f"l{m}.{suffix}"] = ("F32", b)
    config = {"model": str(model), "moe_layers": len(ws), "experts": int(E), "hidden_size": int(H), "top_k": int(top_k),
              "scoring": "sigmoid" if score_biases is not None else "softmax"}
    n_group = int(n_group)
    if n_group < 1 or E % n_group != 0:
        raise TraceError(f"n_group = {n_group}: must be a positive divisor of the expert count ({E})")
    kept = n_group if topk_group is None else int(topk_group)
    if not 1 <= kept <= n_group or int(top_k) > kept * (E // n_group):
        raise TraceError(f"topk_group = {topk_group}: must be between 1 and n_group ({n_group}) and keep at least "
                         f"top_k ({top_k}) experts")
    if group_score not in (None, "max", "top2_sum"):
        raise TraceError(f"group_score = {group_score!r}: must be 'max' or 'top2_sum'")
    if n_group > 1:
        config.update({"n_group": n_group, "topk_group": kept})
        if group_score is not None:
            config["group_score"] = group_score
    if source is not None:
        config["source"] = source
    write_safetensors(path, tensors, {"format": "moesched-gates", "config": json.dumps(config)})


def from_routing(ids, weights=None, steps=None, model=None, *, experts_per_layer=None, prompt_tokens=0, requests=None,
                 request_ids=None, token_ids=None, positions=None, hidden=None, source="moesched_trace.from_routing", dataset="",
                 notes=""):
    """Build a valid Trace from routing arrays (numpy, or anything np.asarray takes: torch tensors
    on the CPU, lists), so any dump (pickle, parquet, torch.save) converts in a few lines.

    ids: integer array [T, L, K]: for each of T tokens (in trace order), each of L MoE layers, the
        K experts chosen. weights: optional float array of the same shape (their gate weights).
    steps: how the tokens form forward steps, in token order. Either a list of
        (request, phase, tokens) or (request, phase, tokens, draft_len, accepted) tuples (or dicts
        with those keys), phase "prefill", "decode", "verify" (or 0, 1, 2), tokens adding up to T;
        or None: the tokens of each request (see `requests`) are its first `prompt_tokens` as one
        prefill step, then one decode step per token.
    requests: with steps=None, one request label per token ([T]; each request's tokens together);
        None: one request. The labels, in order of appearance, name the requests unless
        `request_ids` does.
    model: a dict {"name", "moe_layers", "experts_per_layer", "top_k"} (moe_layers and top_k must
        be L and K), or a name; then experts_per_layer comes from the argument, else it is the
        largest id + 1.
    token_ids, positions: optional [T] integers (vocabulary ids, positions in the sequence).
    hidden: optional {name: float array [T, L, hidden_size]}: hidden states per token and MoE layer,
        stored as float16 (tensor hidden.h). The names moesched-trace predict reads are those
        record.py writes: "moe_input" (the MoE block's input: skip_gate), "layer_output" (the
        decoder layer's output: the MLP predictor), "attn_input" (the attention's input after its
        norm: the linear predictor), "draft_moe_input" (the draft's feed-forward input for verify
        tokens 0..gamma-1: draft_gate). With write_gates(), a dump of routing and hidden states
        gets prediction channels from `moesched-trace predict`.

    Every value is checked as the C++ reader checks it (ids below experts_per_layer, no id twice
    in one token's top-k, finite weights, consistent steps); a problem raises TraceError naming
    the value. Write the result with write().

    Example: 12 tokens of one request (an 8-token prompt, then 4 decode steps), 4 MoE layers,
    top-2 of 8 experts.

    >>> import numpy as np
    >>> import moesched_trace as mt
    >>> rng = np.random.default_rng(0)
    >>> ids = np.argsort(rng.random((12, 4, 8)), axis=2)[:, :, :2]
    >>> t = mt.from_routing(ids, steps=[(0, "prefill", 8)] + [(0, "decode", 1)] * 4, model="toy-moe", experts_per_layer=8)
    >>> [mt.PHASES[int(p)] for p in t.step_phase]
    ['prefill', 'decode', 'decode', 'decode', 'decode']
    >>> mt.write("toy.trace.safetensors", t)        # then: moesched-trace validate toy.trace.safetensors
    >>> t2 = mt.from_routing(ids, model="toy-moe", experts_per_layer=8, prompt_tokens=8, requests=[0] * 6 + [1] * 6)
    >>> t2.meta["request_ids"], [int(n) for n in t2.step_tokens]
    (['0', '1'], [6, 6])
    """
    ids = np.asarray(ids)
    if ids.ndim != 3:
        raise TraceError(f"ids: expected an array [tokens, moe_layers, top_k], got shape {list(ids.shape)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TraceError(f"ids: expected integer expert ids, got {ids.dtype}")
    T, L, K = (int(d) for d in ids.shape)
    if T < 1 or not 1 <= L <= 4096 or K < 1:
        raise TraceError(f"ids: shape {list(ids.shape)}: need at least one token, 1..4096 layers and top_k >= 1")
    if isinstance(model, dict):
        m = dict(model)
        for key in ("moe_layers", "experts_per_layer", "top_k"):
            if key not in m:
                raise TraceError(f"model: {key} is missing")
        if int(m["moe_layers"]) != L or int(m["top_k"]) != K:
            raise TraceError(f"model: moe_layers {m['moe_layers']} and top_k {m['top_k']} do not match ids of shape {list(ids.shape)}")
        if experts_per_layer is not None and int(experts_per_layer) != int(m["experts_per_layer"]):
            raise TraceError(f"experts_per_layer = {experts_per_layer}: differs from model's {m['experts_per_layer']}")
        E = int(m["experts_per_layer"])
        name = str(m.get("name", ""))
    else:
        name = "" if model is None else str(model)
        E = int(experts_per_layer) if experts_per_layer is not None else int(ids.max()) + 1
    if not 1 <= E <= 32768 or K > E:
        raise TraceError(f"experts_per_layer = {E}: must be between top_k ({K}) and 32768")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= E:
        bad = np.argwhere((ids < 0) | (ids >= E))[0]
        raise TraceError(f"ids[token {bad[0]}, layer {bad[1]}] = {int(ids[tuple(bad)])}: expert ids must be between 0 and experts_per_layer - 1 ({E - 1})")
    srt = np.sort(ids, axis=2)
    dup = np.argwhere((srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)) if K > 1 else np.zeros((0, 2), dtype=np.int64)
    if len(dup):
        t, layer = (int(x) for x in dup[0])
        raise TraceError(f"ids[token {t}, layer {layer}] = {ids[t, layer].tolist()}: an expert chosen twice in one token's top-k")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != ids.shape:
            raise TraceError(f"weights: shape {list(w.shape)} differs from ids' {list(ids.shape)}")
        bad = ~np.isfinite(w) | (np.abs(w) > 65504.0)
        if bad.any():
            t, layer, k = (int(x) for x in np.argwhere(bad)[0])
            raise TraceError(f"weights[token {t}, layer {layer}, {k}] = {w[t, layer, k]}: gate weights must be finite and fit in float16 (|w| <= 65504)")
        w = w.astype(np.float16)
    labels = None
    if steps is None:
        if requests is None:
            runs = [(None, T)]
        else:
            req = np.asarray(requests)
            if req.shape != (T,):
                raise TraceError(f"requests: expected one label per token ({T}), got shape {list(req.shape)}")
            runs, seen = [], set()
            for i in range(T):
                label = req[i].item()
                if i == 0 or label != runs[-1][0]:
                    if label in seen:
                        raise TraceError(f"requests[{i}] = {label!r}: the tokens of a request must be together (it appeared before)")
                    seen.add(label)
                    runs.append((label, 0))
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            labels = [str(label) for label, _ in runs]
        if not isinstance(prompt_tokens, (int, np.integer)) or prompt_tokens < 0:
            raise TraceError(f"prompt_tokens = {prompt_tokens!r}: expected a non-negative integer")
        table = []
        for r, (_, n) in enumerate(runs):
            p = min(int(prompt_tokens), n)
            if p > 0:
                table.append((r, 0, p, 0, 0))
            table.extend((r, 1, 1, 0, 0) for _ in range(n - p))
    else:
        if requests is not None:
            raise TraceError("requests: give either steps (each naming its request) or requests, not both")
        table = [_step_tuple(i, s) for i, s in enumerate(steps)]
        total = sum(s[2] for s in table)
        if total != T:
            raise TraceError(f"steps: their tokens add up to {total}, ids has {T} tokens")
    if not table:
        raise TraceError("steps: no steps")
    request_count = max(s[0] for s in table) + 1
    names = list(request_ids) if request_ids is not None else labels
    if names is not None:
        names = [str(n) for n in names]
        if len(names) < request_count:
            raise TraceError(f"request_ids: {len(names)} names for {request_count} requests")
        request_count = len(names)
    meta = {"format_version": FORMAT_VERSION,
            "model": {"name": name, "moe_layers": L, "experts_per_layer": E, "top_k": K},
            "source": str(source), "dataset": str(dataset), "notes": str(notes), "generated": False,
            "request_count": request_count}
    if names is not None:
        meta["request_ids"] = names
    meta.update({"channels": [], "hidden_states": [], "provenance": {"built_by": "moesched_trace.from_routing"}})
    tr = Trace(meta)
    for hname, values in (hidden or {}).items():
        hv = np.asarray(values, dtype=np.float64)
        if hv.ndim != 3 or hv.shape[0] != T or hv.shape[1] != L or hv.shape[2] < 1:
            raise TraceError(f"hidden['{hname}']: expected an array [tokens ({T}), moe_layers ({L}), hidden_size], "
                             f"got shape {list(hv.shape)}")
        bad = ~np.isfinite(hv) | (np.abs(hv) > 65504.0)
        if bad.any():
            t_, layer, i = (int(x) for x in np.argwhere(bad)[0])
            raise TraceError(f"hidden['{hname}'][token {t_}, layer {layer}, {i}] = {hv[t_, layer, i]}: hidden states must "
                             f"be finite and fit in float16 (|v| <= 65504)")
        tr.hidden.append({"name": str(hname), "description": HIDDEN_STATES.get(str(hname), ""), "layers": list(range(L)),
                          "hidden_size": int(hv.shape[2]), "dtype": "F16", "values": hv.astype(np.float16)})
    cols = np.array(table, dtype=np.int64).reshape(-1, 5)
    tr.step_request = cols[:, 0].astype(np.uint32)
    tr.step_phase = cols[:, 1].astype(np.uint8)
    tr.step_tokens = cols[:, 2].astype(np.uint32)
    tr.step_draft_len = cols[:, 3].astype(np.uint16)
    tr.step_accepted = cols[:, 4].astype(np.uint16)
    tr.routing_experts = ids.astype(np.uint8 if E <= 255 else np.uint16)
    tr.routing_weights = w
    tr.token_ids = None if token_ids is None else _per_token("token_ids", token_ids, T)
    tr.token_positions = None if positions is None else _per_token("positions", positions, T)
    return tr
