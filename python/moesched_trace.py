"""Read and write moesched routing traces (traces/FORMAT.md) with json + numpy only.

    import moesched_trace as mt
    t = mt.read("run.trace.safetensors")        # arrays are memory-mapped, not copied
    t.meta["model"]["top_k"]                      # metadata as a dict
    t.routing_experts.shape                       # (tokens, moe_layers, top_k)
    first = t.step_first_token()                  # where each step's tokens start
    mt.write("copy.trace.safetensors", t)         # atomic: temp file + rename

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
