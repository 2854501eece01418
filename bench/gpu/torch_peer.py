#!/usr/bin/env python3
"""torch_peer: the eager PyTorch peer of moesched-replay (issue 11).

It replays a moesched routing trace doing the same work as the CUDA executor
(include/moesched/cuda/backend.cuh driven by include/moesched/runtime/driver.hpp), written as a
plain eager PyTorch loop in bf16, and reports TPOT exactly as moesched defines it. At batch 1 a
layer's kernels take tens of microseconds, so host overhead decides TPOT: this loop is the peer to
beat, to be run beside moesched-replay on the same machine, same trace, same budget.

    # on the GPU machine, from the repository root
    python3 bench/gpu/torch_peer.py --trace traces/real/mix-prose-sd4.trace.safetensors \\
        --model moesched-upcycled-mix --cache-gb 0.2 --policy resident,on-demand,lru --json peer.json
    # anywhere, numpy only: the scheduling alone (copies, evictions, hits), no torch, no GPU
    python3 bench/gpu/torch_peer.py --dry-run --trace ... --model ... --cache-gb 0.2 --policy lru

What one pass runs (a pass is one step of the trace: a prefill, a decode, or an SD verify step of
draft_len + 1 tokens), in the executor's order:
  SD: draft_len draft steps, each over max(1, member_count) tokens: for every MoE layer its dense
      part plus one routed-expert-sized FFN (one fixed weight set), then the LM head;
  per MoE layer l:
      dense part: the dense decoder layers before it (before MoE layer 0: first_dense_layers; before
      the others: moe_layer_interval - 1), each attention projections (qkv: [q_out + 2 kv_out] x
      hidden, o: hidden x o_in) and a dense FFN; then layer l's own attention projections, its
      router ([experts] x hidden) and its shared experts as one FFN of shared_experts x
      shared_expert_intermediate_size;
      the gate: the host waits for the dense part (the executor's driver gates on the dense
      kernel's completion; an eager engine reads the router output), then the policy decides which
      needed experts to copy and which to evict (the layer's experts are the union over the pass's
      tokens, in order of first appearance, each run over the tokens routed to it);
      the routed experts: gate and up GEMMs, SiLU(gate) x up, down GEMM accumulated into the layer
      output (beta = 1, as the executor), over the first `tokens` rows of the activations (the
      executor gathers nothing either);
  LM head (vocab x hidden) over the pass's tokens.
No attention over a KV cache, no norms, no sampling: the executor runs none of them. Weights are
random (timing does not depend on values). The attention output fed to the o projection is a fixed
random buffer standing in for the attention the executor does not run.

Expert memory (--policy):
  resident   every expert on the GPU, nothing copied. When all of them do not fit, at most
             --max-distinct weight sets are allocated (default: as many as fit, leaving 2 GiB) and
             expert f reads set f mod N (as moesched-replay's --host-experts aliasing): same shapes,
             same bytes read per GEMM.
  on-demand  a pool of `slots` GPU buffers = min(floor(cache_gb x 1e9 / expert_bytes), all experts),
             expert_bytes being the model's expert size in its dtype (ModelDesc::expert_bytes, as
             sim::slots_for); one least-recently-used order over all layers (policy::OnDemand).
  lru        the same pool, split per MoE layer in equal shares, the first layers taking the
             remainder; a layer evicts its own least recently used expert, and borrows from the
             layer furthest over its share when it holds fewer than its share or has nothing of its
             own to evict (policy::LayerLru).
  Both copy only at the gate (demand copies), in the layer's use order; the slot taken is the
  executor's (runtime::Machine's free list: slot 0 first, freed slots reused last-in first-out).
Each copy moves the executor's bytes: max(3 x hidden x moe_ffn x 2, the model's expert bytes) rounded
up to 4 (an f32 model such as moesched-upcycled-mix copies its f32 size; the GEMMs read the first
3 x hidden x moe_ffn bf16 values of the slot), as --chunks equal pieces (moesched-replay's default
3), each a Tensor.copy_(pinned_host_piece, non_blocking=True). Copies run on a side stream: before
its first piece the copy stream waits for the event recorded after the slot's last reader (the
executor's slot-free event), and after its last piece it records the slot's "landed" event. At the
gate the copies go out first; then the compute stream runs the experts that were resident at the
gate (use order), then each copied expert after waiting for its landed event (copies land in the
order they were issued, as the executor's single copy stream lands them). Host memory holds
--host-experts distinct pinned experts (0 = all) and expert f copies from host expert f mod N (as
moesched-replay's --host-experts).

Timing (runtime/metrics.hpp, ARCHITECTURE.md): a pass lasts from the end of the previous pass (the
first: from the start of the run) to the end of its LM head; the end is a CUDA event recorded after
the LM head, synchronised before the next pass starts (the executor's driver, too, starts the next
pass only once it has seen the head's completion). Durations are read between those events
(torch.cuda.Event.elapsed_time), so the host time between passes, the draft steps and every gate
wait are inside them. A decode or verify pass of duration d emits e_m tokens for member m; each
output token is one sample d / e_m. TPOT mean = sum of d over (pass, member) / tokens emitted; p50
and p99 are token-weighted percentiles of the samples. Prefill passes count for TTFT (group start to
the end of the request's last prefill pass), not for TPOT.

Warm-up: before the timed run (once per process), every kernel shape of the decode passes runs once
untimed (dense part of MoE layers 0 and 1, one expert FFN, the LM head and a draft step, at every
token count from 1 to the largest decode or verify pass), and one copy goes over the link; then the
device is synchronised. This keeps cuBLAS's handle creation, kernel loading and heuristics off the
timed passes (the executor's initialize() warms up dense, expert and head at one token the same
way). Prefill shapes are not warmed: prefill is not in TPOT.

Exit codes: 0 ok; 1 no CUDA device, out of GPU memory or a CUDA failure; 2 bad input (the message
names the file, the field and the value).
"""

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

import numpy as np  # noqa: E402  (after the path set-up, like moesched_trace)
import moesched_trace as mt  # noqa: E402

POLICIES = ("resident", "on-demand", "lru")
PREFILL, DECODE, VERIFY = 0, 1, 2
GIB = 1 << 30


class InputError(Exception):
    """Bad input: names the source (file or option), the field and the value, as ConfigError does."""

    def __init__(self, source, field, value, reason):
        where = ": ".join(str(p) for p in (source, f"{field} = {value}" if field else value) if p not in ("", None))
        super().__init__(f"{where}: {reason}" if where else reason)


class DeviceError(Exception):
    """No CUDA device, out of GPU memory, or a CUDA failure (exit 1)."""


# ---------------------------------------------------------------------------------------------
# Model presets (include/moesched/io/presets.hpp, core/model.hpp, core/dtype.hpp)

# name: (bits per weight, scale granularity, group, scale bits per group/row/tensor)
DTYPES = {
    "f32": (32, "none", 0, 0), "bf16": (16, "none", 0, 0), "fp16": (16, "none", 0, 0),
    "fp8": (8, "per_tensor", 0, 32), "int8": (8, "per_row", 0, 16),
    "int4": (4, "per_group", 128, 32), "mxfp4": (4, "per_group", 32, 8),
}
DTYPE_ALIASES = {"float32": "f32", "fp32": "f32", "bfloat16": "bf16", "float16": "fp16", "f16": "fp16",
                 "half": "fp16", "fp8_e4m3": "fp8", "float8_e4m3fn": "fp8"}


def matrix_bytes(dtype, rows, cols):
    """Bytes of a rows x cols matrix stored as `dtype`, scales included (core/dtype.hpp)."""
    bits, scales, group, scale_bits = DTYPES[dtype]
    total = rows * cols * bits
    if scales == "per_tensor":
        total += scale_bits
    elif scales == "per_row":
        total += rows * scale_bits
    elif scales == "per_group":
        total += rows * ((cols + group - 1) // group) * scale_bits
    return (total + 7) // 8


def vector_bytes(dtype, n):
    return n * (4 if dtype == "f32" else 2)


class Model:
    """The numbers of a model preset the peer needs, and the shapes CudaBackend::from_model derives."""

    def __init__(self, doc, source):
        def field(obj, key, prefix, kind, default=None, minimum=None):
            name = prefix + key
            if key not in obj:
                if default is None:
                    raise InputError(source, name, "(missing)", "required field")
                return default
            v = obj[key]
            if kind is int:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise InputError(source, name, json.dumps(v), "expected an integer")
                if minimum is not None and v < minimum:
                    raise InputError(source, name, v, f"must be at least {minimum}")
            elif kind is bool and not isinstance(v, bool):
                raise InputError(source, name, json.dumps(v), "expected true or false")
            elif kind is str and not isinstance(v, str):
                raise InputError(source, name, json.dumps(v), "expected a string")
            return v

        if not isinstance(doc, dict):
            raise InputError(source, "", "", "a model preset is a JSON object")
        if doc.get("kind", "model") != "model":
            raise InputError(source, "kind", json.dumps(doc["kind"]), 'this is not a model preset (expected "model")')
        self.source = source
        self.name = field(doc, "name", "", str)
        dtype = field(doc, "dtype", "", str, default="bf16")
        self.dtype = DTYPE_ALIASES.get(dtype, dtype)
        if self.dtype not in DTYPES:
            raise InputError(source, "dtype", json.dumps(dtype), "unknown dtype; known: " + ", ".join(DTYPES))
        self.decoder_layers = field(doc, "decoder_layers", "", int, minimum=1)
        self.first_dense_layers = field(doc, "first_dense_layers", "", int, default=0, minimum=0)
        self.moe_layer_interval = field(doc, "moe_layer_interval", "", int, default=1, minimum=1)
        self.experts = field(doc, "num_experts", "", int, minimum=1)
        self.top_k = field(doc, "top_k", "", int, minimum=1)
        self.shared_experts = field(doc, "shared_experts", "", int, default=0, minimum=0)
        self.shared_expert_ffn = field(doc, "shared_expert_intermediate_size", "", int, default=0, minimum=0)
        self.hidden = field(doc, "hidden_size", "", int, minimum=1)
        self.moe_ffn = field(doc, "moe_intermediate_size", "", int, minimum=1)
        self.dense_ffn = field(doc, "dense_intermediate_size", "", int, default=0, minimum=0)
        self.vocab = field(doc, "vocab_size", "", int, minimum=1)
        self.expert_bias = field(doc, "expert_bias", "", bool, default=False)
        if self.top_k > self.experts:
            raise InputError(source, "top_k", self.top_k, f"must be at most num_experts ({self.experts})")
        if self.first_dense_layers >= self.decoder_layers:
            raise InputError(source, "first_dense_layers", self.first_dense_layers,
                             f"must be below decoder_layers ({self.decoder_layers}): a model needs an MoE layer")
        if (self.first_dense_layers > 0 or self.moe_layer_interval > 1) and self.dense_ffn < 1:
            raise InputError(source, "dense_intermediate_size", self.dense_ffn, "must be positive: the model has dense layers")
        if self.shared_experts > 0 and self.shared_expert_ffn < 1:
            raise InputError(source, "shared_expert_intermediate_size", self.shared_expert_ffn,
                             "must be positive when shared_experts is set")
        att = doc.get("attention")
        if not isinstance(att, dict):
            raise InputError(source, "attention", json.dumps(att), "required object")
        kind = field(att, "kind", "attention.", str, default="gqa")
        heads = field(att, "heads", "attention.", int, minimum=1)
        if kind == "gqa":
            kv_heads = field(att, "kv_heads", "attention.", int, default=heads, minimum=1)
            head_dim = field(att, "head_dim", "attention.", int, minimum=1)
            self.q_out, self.kv_out, self.o_in = heads * head_dim, kv_heads * head_dim, heads * head_dim
        elif kind == "mla":  # q (a low-rank pair folded into one), the compressed kv, the output
            nope = field(att, "qk_nope_head_dim", "attention.", int, minimum=1)
            rope = field(att, "qk_rope_head_dim", "attention.", int, default=0, minimum=0)
            kv_lora = field(att, "kv_lora_rank", "attention.", int, minimum=1)
            v_dim = field(att, "v_head_dim", "attention.", int, minimum=1)
            self.q_out, self.kv_out, self.o_in = heads * (nope + rope), kv_lora + rope, heads * v_dim
        else:
            raise InputError(source, "attention.kind", json.dumps(kind), 'must be "gqa" or "mla"')
        self.moe_layers = (self.decoder_layers - self.first_dense_layers + self.moe_layer_interval - 1) // self.moe_layer_interval
        self.shared_ffn = self.shared_experts * self.shared_expert_ffn
        self.dense_between = self.moe_layer_interval - 1
        h, f = self.hidden, self.moe_ffn
        # The expert as the model stores it (ModelDesc::expert_bytes): budget and slots count these.
        self.expert_bytes = 2 * matrix_bytes(self.dtype, f, h) + matrix_bytes(self.dtype, h, f)
        if self.expert_bias:
            self.expert_bytes += vector_bytes(self.dtype, 2 * f + h)
        # The expert as the executor copies it: at least its bf16 matrices, a multiple of 4 bytes.
        self.matrix_bytes_bf16 = 3 * h * f * 2
        self.copy_bytes = (max(self.matrix_bytes_bf16, self.expert_bytes) + 3) // 4 * 4


def normalize_name(s):
    return "".join(c for c in s.lower() if c not in "-_. ")


def preset_dirs(extra):
    dirs = [Path(d) for d in extra]
    dirs += [Path(d) for d in os.environ.get("MOESCHED_PRESET_PATH", "").split(":") if d]
    dirs.append(REPO / "presets")
    return dirs


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(path, "", "", "no such file") from None
    except OSError as e:
        raise InputError(path, "", "", f"cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, "", "", f"not valid JSON: {e}") from None


def load_model(name_or_path, extra_dirs):
    """A model preset by name, alias or file stem (case, '-', '_', '.', ' ' ignored), or a .json path."""
    if name_or_path.endswith(".json") or os.sep in name_or_path:
        return Model(read_json(name_or_path), name_or_path)
    want = normalize_name(name_or_path)
    known = []
    for d in preset_dirs(extra_dirs):
        for path in sorted((d / "models").glob("*.json")):
            doc = read_json(str(path))
            names = [path.stem]
            if isinstance(doc, dict):
                names += [doc.get("name", "")] + list(doc.get("aliases", []))
                known.append(doc.get("name", path.stem))
            if any(isinstance(n, str) and normalize_name(n) == want for n in names):
                return Model(doc, str(path))
    raise InputError("", "model", json.dumps(name_or_path),
                     "no such model preset; known: " + ", ".join(sorted(set(known))) + " (or pass a .json path)")


# ---------------------------------------------------------------------------------------------
# Workload: the passes of a replay (include/moesched/workload/workload.hpp, build_workload)

class Rng:
    """moesched::Rng (xoshiro256** seeded through splitmix64): the same draws for the same seed."""
    M = (1 << 64) - 1

    def __init__(self, seed):
        x = seed & self.M
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & self.M
            z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & self.M
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.M
            self.s.append(z ^ (z >> 31))

    @classmethod
    def _rotl(cls, x, k):
        return ((x << k) | (x >> (64 - k))) & cls.M

    def next(self):
        s0, s1, s2, s3 = self.s
        result = (self._rotl((s1 * 5) & self.M, 7) * 9) & self.M
        t = (s1 << 17) & self.M
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = self._rotl(s3, 45)
        self.s = [s0, s1, s2, s3]
        return result

    def chance(self, p):
        return (self.next() >> 11) * 2.0 ** -53 < p


class Unit:
    """One pass of one request before batching: trace tokens `first`.. or `token_list`."""
    __slots__ = ("phase", "first", "tokens", "draft_len", "emitted", "token_list")

    def __init__(self, phase, first, tokens, draft_len, emitted, token_list=None):
        self.phase, self.first, self.tokens, self.draft_len = phase, first, tokens, draft_len
        self.emitted, self.token_list = emitted, token_list


class Pass:
    """One forward pass: phase, tokens run, drafts, members [(request, emitted)], request group,
    and per MoE layer the experts it needs [(expert, tokens routed to it)] in order of first use."""
    __slots__ = ("phase", "tokens", "draft_len", "members", "batch", "uses")


def build_workload(trace, batch, prefill, max_requests, gamma, acceptance, seed):
    """The passes moesched builds from `trace` (build_workload: same grouping, same SD re-cut)."""
    requests, phases = trace.step_request.tolist(), trace.step_phase.tolist()
    tokens, drafts, accepted = trace.step_tokens.tolist(), trace.step_draft_len.tolist(), trace.step_accepted.tolist()
    firsts = trace.step_first_token().tolist()
    reqs, index = [], {}  # requests in order of first appearance: (id, prefill units, decode units)
    for s in range(len(requests)):
        r = requests[s]
        if r not in index:
            if max_requests and len(reqs) >= max_requests:
                continue
            index[r] = len(reqs)
            reqs.append((r, [], []))
        emitted = accepted[s] + 1 if phases[s] == VERIFY else 1
        u = Unit(phases[s], firsts[s], tokens[s], drafts[s], emitted)
        if phases[s] == PREFILL:
            if prefill:
                reqs[index[r]][1].append(u)
        else:
            reqs[index[r]][2].append(u)
    if gamma:  # re-cut each request's output token stream into verification windows
        rng = Rng(seed)
        for _, _, decode in reqs:
            out = []
            for u in decode:
                out.extend(range(u.first, u.first + (u.emitted if u.phase == VERIFY else 1)))
            windows, i = [], 0
            while i < len(out):
                g = min(gamma, len(out) - i - 1)
                if g == 0:
                    w = Unit(DECODE, out[i], 1, 0, 1)
                else:
                    a = 0
                    while a < g and rng.chance(acceptance):
                        a += 1
                    w = Unit(VERIFY, 0, g + 1, g, a + 1, out[i:i + g + 1])
                i += w.emitted
                windows.append(w)
            decode[:] = windows

    routing = trace.routing_experts
    layers = routing.shape[1]
    passes = []

    def emit(units, members, phase, group):
        p = Pass()
        p.phase, p.batch, p.members = phase, group, members
        p.tokens = sum(u.tokens for u in units)
        p.draft_len = max(u.draft_len for u in units)
        if p.phase == VERIFY and p.draft_len == 0:
            p.phase = DECODE
        rows = [routing[u.first:u.first + u.tokens] if u.token_list is None else routing[u.token_list] for u in units]
        ids = (rows[0] if len(rows) == 1 else np.concatenate(rows)).transpose(1, 0, 2).reshape(layers, -1).tolist()
        if p.tokens == 1:  # one token: its top-k ids are distinct (a trace rule)
            p.uses = [[(e, 1) for e in row] for row in ids]
        else:
            p.uses = []
            for row in ids:
                count = {}  # insertion order = order of first use, as the workload's
                for e in row:
                    count[e] = count.get(e, 0) + 1
                p.uses.append(list(count.items()))
        passes.append(p)

    for group, g0 in enumerate(range(0, len(reqs), batch)):
        members_of = reqs[g0:g0 + batch]
        for stage in (1, 2):  # prefill units, then decode units
            for k in range(max(len(r[stage]) for r in members_of)):
                units, members = [], []
                for r in members_of:
                    if k < len(r[stage]):
                        units.append(r[stage][k])
                        members.append((r[0], r[stage][k].emitted))
                phase = PREFILL if stage == 1 else VERIFY if any(u.phase == VERIFY for u in units) else DECODE
                emit(units, members, phase, group)
    return passes, len(reqs)


# ---------------------------------------------------------------------------------------------
# Scheduling: which experts are copied and evicted at each gate (runtime/machine.hpp books,
# policy/baseline.hpp OnDemand and LayerLru). Shared by --dry-run and the GPU run.

class SlotBooks:
    """runtime::Machine's books for demand-only policies: slot per resident expert, free list.
    Every copy lands before the layer's experts run, so an expert is either absent or resident
    with a slot; the needed experts of the running layer are pinned (not evictable)."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.free = list(range(capacity - 1, -1, -1))  # pop() takes slot 0 first, as Machine's free list
        self.slot = {}  # flat id -> slot
        self.copies = self.evictions = 0

    def holds(self, f):
        return f in self.slot

    def copy(self, f):
        self.slot[f] = self.free.pop()
        self.copies += 1

    def evict(self, f):
        self.free.append(self.slot.pop(f))
        self.evictions += 1


class AllResident:
    """Books of the resident peer: every expert held, expert f in weight set f mod `distinct`."""

    def __init__(self, distinct):
        self.distinct = distinct
        self.copies = self.evictions = 0

    def holds(self, f):
        return True


def touch(order, f):
    """Makes `f` the most recently used of `order` (oldest first), inserting it if absent."""
    order[f] = None
    order.move_to_end(f)


def oldest_evictable(order, pinned):
    return next((f for f in order if f not in pinned), None)


class OnDemandPolicy:
    """policy::OnDemand: copy on miss; one least-recently-used order over all layers."""

    def __init__(self, books, layers, experts):
        self.books = books
        self.held = OrderedDict()

    def on_gate(self, layer, needed, pinned):
        books, held = self.books, self.held
        for f in needed:
            if books.holds(f):
                touch(held, f)
        for f in needed:
            if books.holds(f):
                continue
            if not books.free:
                v = oldest_evictable(held, pinned)
                if v is None:  # the budget holds max_layer_union experts: never reached
                    raise AssertionError("on-demand: nothing evictable")
                books.evict(v)
                del held[v]
            books.copy(f)
            touch(held, f)


class LayerLruPolicy:
    """policy::LayerLru: per-layer LRU with equal shares (the first layers get the remainder); a
    layer under its share, or with nothing of its own evictable, borrows from the layer furthest
    over its share that has an evictable expert (the first such layer on ties)."""

    def __init__(self, books, layers, experts):
        self.books, self.experts = books, experts
        self.lists = [OrderedDict() for _ in range(layers)]
        self.share = [books.capacity // layers + (1 if layer < books.capacity % layers else 0) for layer in range(layers)]

    def victim(self, layer, pinned):
        if len(self.lists[layer]) >= self.share[layer]:
            v = oldest_evictable(self.lists[layer], pinned)
            if v is not None:
                return v
        best, over = None, -math.inf
        for lst, share in zip(self.lists, self.share):
            o = len(lst) - share
            if o <= over:
                continue
            v = oldest_evictable(lst, pinned)
            if v is None:
                continue
            best, over = v, o
        return best

    def on_gate(self, layer, needed, pinned):
        books, own = self.books, self.lists[layer]
        for f in needed:
            if books.holds(f):
                touch(own, f)
        for f in needed:
            if books.holds(f):
                continue
            if not books.free:
                v = self.victim(layer, pinned)
                if v is None:  # the budget holds max_layer_union experts: never reached
                    raise AssertionError("lru: nothing evictable")
                books.evict(v)
                del self.lists[v // self.experts][v]
            books.copy(f)
            touch(own, f)


class ResidentPolicy:
    def __init__(self, books, layers, experts):
        pass

    def on_gate(self, layer, needed, pinned):
        pass


class Scheduler:
    """A policy with its books and the driver's use accounting at each gate."""

    def __init__(self, name, capacity, distinct, layers, experts):
        self.name, self.experts = name, experts
        self.books = AllResident(distinct) if name == "resident" else SlotBooks(capacity)
        cls = {"resident": ResidentPolicy, "on-demand": OnDemandPolicy, "lru": LayerLruPolicy}[name]
        self.policy = cls(self.books, layers, experts)
        self.uses = self.hits = 0

    def gate(self, layer, uses):
        """The layer's needed experts (flat ids, use order) and whether each was resident at the
        gate (a cache hit; else a miss, copied now)."""
        base = layer * self.experts
        needed = [base + e for e, _ in uses]
        was = [self.books.holds(f) for f in needed]
        self.uses += len(needed)
        self.hits += sum(was)
        self.policy.on_gate(layer, needed, set(needed))
        return needed, was

    def counts(self, copy_bytes):
        return {"uses": self.uses, "cache_hits": self.hits, "misses": self.uses - self.hits,
                "experts_copied": self.books.copies, "evictions": self.books.evictions,
                "bytes_copied": self.books.copies * copy_bytes}


# ---------------------------------------------------------------------------------------------
# Metrics (runtime/metrics.hpp)

def summarize(samples):
    """Token-weighted mean, p50 and p99 of (value, weight) samples, as runtime::summarize."""
    samples = sorted(samples)
    total = sum(w for _, w in samples)
    if total == 0:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}

    def percentile(q):
        target, acc = q * total, 0
        for v, w in samples:
            acc += w
            if acc >= target:
                return v
        return samples[-1][0]

    return {"mean": sum(v * w for v, w in samples) / total, "p50": percentile(0.5), "p99": percentile(0.99)}


class PassClock:
    """Pass durations into TPOT and TTFT samples, as LayerDriver::end_pass."""

    def __init__(self):
        self.tpot, self.first_token = [], {}
        self.prev_end = 0.0
        self.batch, self.batch_start = None, 0.0
        self.passes = self.decode_passes = self.decode_tokens = 0
        self.decode_ms = self.prefill_ms = 0.0

    def end_pass(self, p, end_ms):
        start = self.prev_end
        if p.batch != self.batch:
            self.batch, self.batch_start = p.batch, start
        d = end_ms - start
        self.passes += 1
        if p.phase == PREFILL:
            self.prefill_ms += d
            for request, _ in p.members:
                self.first_token[request] = end_ms - self.batch_start
        else:
            self.decode_ms += d
            self.decode_passes += 1
            for _, emitted in p.members:
                if emitted:
                    self.tpot.append((d / emitted, emitted))
                    self.decode_tokens += emitted
        self.prev_end = end_ms

    def record(self):
        return {"tpot_ms": summarize(self.tpot),
                "ttft_ms": summarize([(ms, 1) for ms in self.first_token.values()]),
                "tokens_per_s": self.decode_tokens / (self.decode_ms / 1e3) if self.decode_ms > 0 else 0.0,
                "decode_tokens": self.decode_tokens, "passes": self.passes, "decode_passes": self.decode_passes,
                "total_s": self.prev_end / 1e3, "decode_ms": self.decode_ms, "prefill_ms": self.prefill_ms}


# ---------------------------------------------------------------------------------------------
# The eager PyTorch model (the GEMMs of CudaBackend::dense, ffn, expert_ffn, head, draft_step)

class EagerModel:
    def __init__(self, torch, model, max_tokens, device):
        self.F = torch.nn.functional
        self.device = device
        m = model
        self.h, self.f, self.layers = m.hidden, m.moe_ffn, m.moe_layers

        def w(*shape):
            return torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-1 / 64, 1 / 64)

        def ffn(size):
            return (w(size, m.hidden), w(size, m.hidden), w(m.hidden, size)) if size else None

        def dense_layer():
            return w(m.q_out + 2 * m.kv_out, m.hidden), w(m.hidden, m.o_in), ffn(m.dense_ffn)

        self.x = w(max_tokens, m.hidden)    # the activations every GEMM reads (as the executor's x)
        self.ctx = w(max_tokens, m.o_in)    # stands in for the attention output (no KV attention)
        lead = [dense_layer() for _ in range(m.first_dense_layers)]
        self.blocks = []  # per MoE layer: (dense layers before it, qkv, o, router, shared FFN)
        for layer in range(m.moe_layers):
            before = lead if layer == 0 else [dense_layer() for _ in range(m.dense_between)]
            self.blocks.append((before, w(m.q_out + 2 * m.kv_out, m.hidden), w(m.hidden, m.o_in),
                                w(m.experts, m.hidden), ffn(m.shared_ffn)))
        self.head_w = w(m.vocab, m.hidden)
        self.draft_ffn = ffn(m.moe_ffn)   # the draft's one FFN weight set per layer (as draft_ffn)

    def expert_views(self, flat_bf16):
        """(gate, up, down) views of one expert's 3 x hidden x moe_ffn bf16 values."""
        n = self.h * self.f
        return (flat_bf16[:n].view(self.f, self.h), flat_bf16[n:2 * n].view(self.f, self.h),
                flat_bf16[2 * n:3 * n].view(self.h, self.f))

    def ffn_into(self, x, weights, y):
        """y += down(SiLU(gate x) * up x): the executor's FFN with beta = 1."""
        gate, up, down = weights
        F = self.F
        y.addmm_(F.silu(F.linear(x, gate)) * F.linear(x, up), down.t())

    def dense(self, layer, t):
        """Dense part of MoE layer `layer` over `t` tokens; returns the layer output it starts."""
        F = self.F
        x, ctx = self.x[:t], self.ctx[:t]
        before, qkv, o, router, shared = self.blocks[layer]
        for d_qkv, d_o, (gate, up, down) in before:
            F.linear(x, d_qkv)
            F.linear(ctx, d_o)
            F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
        F.linear(x, qkv)
        y = F.linear(ctx, o)
        F.linear(x, router)
        if shared is not None:
            self.ffn_into(x, shared, y)
        return y

    def head(self, t):
        return self.F.linear(self.x[:t], self.head_w)

    def draft_step(self, t):
        for layer in range(self.layers):
            self.ffn_into(self.x[:t], self.draft_ffn, self.dense(layer, t))
        self.head(t)


class ExpertStore:
    """Expert weights: the resident sets, or the slot pool with its events and the pinned host store."""

    def __init__(self, torch, eager, model, kind, count, host):
        self.kind = kind
        dev = eager.device
        n_bf16 = model.matrix_bytes_bf16 // 2
        if kind == "resident":
            self.data = torch.empty((count, n_bf16), dtype=torch.bfloat16, device=dev).uniform_(-1 / 64, 1 / 64)
            self.views = [eager.expert_views(self.data[i]) for i in range(count)]
            return
        self.data = torch.empty((count, model.copy_bytes), dtype=torch.uint8, device=dev)
        self.views = [eager.expert_views(self.data[s, :model.matrix_bytes_bf16].view(torch.bfloat16)) for s in range(count)]
        bounds = host.bounds
        self.chunks = [[self.data[s, bounds[c]:bounds[c + 1]] for c in range(len(bounds) - 1)] for s in range(count)]
        self.free_ev = [torch.cuda.Event() for _ in range(count)]    # after the slot's last reader
        self.landed_ev = [torch.cuda.Event() for _ in range(count)]  # after the slot's last copy piece


class HostStore:
    """Pinned host copies of `count` distinct experts (expert f copies from f mod count), each in
    `chunks` equal pieces as the executor's chunk offsets (e x c / chunks)."""

    def __init__(self, torch, model, count, chunks, device):
        e = model.copy_bytes
        self.count = count
        self.bounds = [e * c // chunks for c in range(chunks)] + [e]
        self.data = torch.empty((count, e), dtype=torch.uint8, pin_memory=True)
        pattern = torch.empty(e // 2, dtype=torch.bfloat16, device=device).uniform_(-1 / 64, 1 / 64)
        self.data[0].copy_(pattern.view(torch.uint8))
        for i in range(1, count):
            self.data[i].copy_(self.data[0])
        self.chunks = [[self.data[i, self.bounds[c]:self.bounds[c + 1]] for c in range(chunks)] for i in range(count)]


def warm_up(torch, eager, passes, host, copy_stream, device):
    """Every decode-pass kernel shape once, untimed, and one copy over the link (see the header)."""
    decode = [p for p in passes if p.phase != PREFILL]
    top = max(p.tokens for p in decode)
    scratch = None
    if host is not None:
        scratch = torch.empty(host.bounds[1], dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for t in range(1, top + 1):
            for layer in range(min(2, eager.layers)):
                eager.ffn_into(eager.x[:t], eager.draft_ffn, eager.dense(layer, t))
            eager.head(t)
        if any(p.draft_len for p in decode):
            eager.draft_step(max(1, max(len(p.members) for p in decode)))
        if scratch is not None:
            with torch.cuda.stream(copy_stream):
                scratch.copy_(host.chunks[0][0], non_blocking=True)
    torch.cuda.synchronize(device)


def run_policy(torch, eager, store, host, sched, passes, copy_stream, gate_wait, label):
    """The timed replay of every pass under one policy; returns the PassClock."""
    clock = PassClock()
    compute = torch.cuda.current_stream()
    start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gate_ev = torch.cuda.Event()
    books = sched.books
    resident = store.kind == "resident"
    last_note = time.monotonic()
    with torch.inference_mode():
        start_ev.record()
        for i, p in enumerate(passes):
            for _ in range(p.draft_len):
                eager.draft_step(max(1, len(p.members)))
            t = p.tokens
            for layer in range(eager.layers):
                y = eager.dense(layer, t)
                if gate_wait:
                    gate_ev.record()
                    gate_ev.synchronize()
                uses = p.uses[layer]
                needed, was = sched.gate(layer, uses)
                if resident:
                    distinct = books.distinct
                    for (_, tokens), f in zip(uses, needed):
                        eager.ffn_into(eager.x[:tokens], store.views[f % distinct], y[:tokens])
                    continue
                copied = [j for j in range(len(needed)) if not was[j]]
                if copied:
                    with torch.cuda.stream(copy_stream):
                        for j in copied:
                            s = books.slot[needed[j]]
                            copy_stream.wait_event(store.free_ev[s])
                            for dst, src in zip(store.chunks[s], host.chunks[needed[j] % host.count]):
                                dst.copy_(src, non_blocking=True)
                            store.landed_ev[s].record(copy_stream)
                for j in [j for j in range(len(needed)) if was[j]] + copied:
                    s = books.slot[needed[j]]
                    if not was[j]:
                        compute.wait_event(store.landed_ev[s])
                    tokens = uses[j][1]
                    eager.ffn_into(eager.x[:tokens], store.views[s], y[:tokens])
                    store.free_ev[s].record(compute)
            eager.head(t)
            end_ev.record()
            end_ev.synchronize()
            clock.end_pass(p, start_ev.elapsed_time(end_ev))
            if time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                print(f"torch_peer: {label}: pass {i + 1}/{len(passes)}, {clock.prev_end / 1e3:.1f} s", file=sys.stderr)
    return clock


# ---------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="torch_peer.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", required=True, help="routing trace (moesched-trace format, .trace.safetensors)")
    ap.add_argument("--model", help="model preset name, alias or JSON file (default: the trace's model name)")
    ap.add_argument("--presets", action="append", default=[], metavar="DIR",
                    help="extra preset directory holding models/*.json, searched first (repeatable; "
                         "then MOESCHED_PRESET_PATH, then the repository's presets/)")
    ap.add_argument("--policy", default="lru",
                    help="resident, on-demand or lru, or several comma-separated (each a record, same "
                         "process and weights); default: %(default)s")
    ap.add_argument("--cache-gb", type=float,
                    help="expert cache budget in GB (1e9 bytes) for on-demand and lru: slots = "
                         "min(floor(budget / model expert bytes), all experts), as moesched-replay")
    ap.add_argument("--max-requests", type=int, default=0, help="replay only the first N requests (0 = all)")
    ap.add_argument("--no-prefill", action="store_true", help="leave prefill steps out (TTFT is then not measured)")
    ap.add_argument("--batch", type=int, default=1, help="requests decoding together (default: %(default)s)")
    ap.add_argument("--gamma", type=int, default=0,
                    help="re-cut decoding into SD windows of N drafts, as moesched's --gamma (0 = replay steps as recorded)")
    ap.add_argument("--acceptance", type=float, default=0.7, help="per-draft acceptance probability for --gamma")
    ap.add_argument("--seed", type=int, default=1, help="seed of the acceptance draws (--gamma)")
    ap.add_argument("--chunks", type=int, default=3,
                    help="copies per expert, equal parts, 1..64 (default %(default)s, moesched-replay's)")
    ap.add_argument("--host-experts", type=int, default=0,
                    help="hold only N distinct experts in pinned host memory and alias expert f onto f mod N "
                         "(0 = all; Mixtral-8x7B's 256 experts take 90 GB)")
    ap.add_argument("--max-distinct", type=int, default=0,
                    help="resident: allocate at most N distinct expert weight sets on the GPU, expert f "
                         "reading set f mod N (0 = all that fit, leaving 2 GiB free)")
    ap.add_argument("--no-gate-wait", action="store_true",
                    help="do not wait for the dense part at each gate (the host runs ahead on the trace's "
                         "routing; no real engine can: it needs the router's output)")
    ap.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default: %(default)s)")
    ap.add_argument("--json", metavar="OUT", help="write the scenario and the records as JSON here")
    ap.add_argument("--dry-run", action="store_true",
                    help="no torch, no GPU: run the scheduling alone (copies, evictions, hits per policy) "
                         "with numpy and print it as JSON")
    return ap.parse_args(argv)


def check_options(a):
    """Option values, before any work (InputError names the option)."""
    policies = [p.strip() for p in a.policy.split(",") if p.strip()]
    for p in policies:
        if p not in POLICIES:
            raise InputError("", "policy", json.dumps(p), "must be one of " + ", ".join(POLICIES))
    if not policies or len(set(policies)) != len(policies):
        raise InputError("", "policy", json.dumps(a.policy), "name each policy once")
    offloaded = any(p != "resident" for p in policies)
    if a.cache_gb is not None and (not math.isfinite(a.cache_gb) or not 0 < a.cache_gb <= 1e6):
        raise InputError("", "cache_gb", a.cache_gb, "must be positive and at most 1000000 GB")
    if offloaded and a.cache_gb is None:
        raise InputError("", "cache_gb", "(missing)", "on-demand and lru need --cache-gb")
    for name, v, lo, hi in (("max_requests", a.max_requests, 0, 2**32 - 1), ("batch", a.batch, 1, 4096),
                            ("gamma", a.gamma, 0, 64), ("chunks", a.chunks, 1, 64),
                            ("host_experts", a.host_experts, 0, 2**32 - 1), ("max_distinct", a.max_distinct, 0, 2**32 - 1),
                            ("seed", a.seed, 0, 2**64 - 1), ("device", a.device, 0, 1024)):
        if not lo <= v <= hi:
            raise InputError("", name, v, f"must be between {lo} and {hi}")
    if not 0.0 <= a.acceptance <= 1.0:
        raise InputError("", "acceptance", a.acceptance, "must be between 0 and 1")
    if a.json:
        parent = Path(a.json).resolve().parent
        if not parent.is_dir():
            raise InputError("", "json", json.dumps(a.json), f"its directory {parent} does not exist")
    return policies


def open_scenario(a):
    """Trace, model, passes and budget, validated as moesched-sim's scenario set-up."""
    if not os.path.isfile(a.trace):
        raise InputError(a.trace, "", "", "no such file")
    try:
        trace = mt.read(a.trace)
    except (mt.TraceError, KeyError, ValueError, OSError) as e:
        raise InputError(a.trace, "", "", f"not a readable moesched trace: {e}") from None
    tm = trace.meta.get("model", {})
    name = a.model or tm.get("name", "")
    if not name:
        raise InputError(a.trace, "model.name", '""', "the trace names no model; pass --model")
    model = load_model(name, a.presets)
    for field, trace_value, model_value in (("moe_layers", tm.get("moe_layers"), model.moe_layers),
                                            ("experts_per_layer", tm.get("experts_per_layer"), model.experts),
                                            ("top_k", tm.get("top_k"), model.top_k)):
        if trace_value != model_value:
            raise InputError(a.trace, "model." + field, trace_value,
                             f"does not match model preset '{model.name}' ({model_value}); pass the model "
                             "the trace was recorded with (--model)")
    passes, requests = build_workload(trace, a.batch, not a.no_prefill, a.max_requests, a.gamma, a.acceptance, a.seed)
    if not any(p.phase != PREFILL and sum(e for _, e in p.members) for p in passes):
        raise InputError(a.trace, "steps", "no decode steps", "nothing to measure TPOT on")
    union = max(len(u) for p in passes for u in p.uses)
    total = model.moe_layers * model.experts
    slots = None
    if a.cache_gb is not None:
        budget = int(a.cache_gb * 1e9)
        slots = min(budget // model.expert_bytes, total)
        if slots < union:
            raise InputError("", "cache_gb", f"{a.cache_gb:.3f}",
                             f"is below one layer's experts: this workload needs {union} experts of "
                             f"{model.expert_bytes / 1e6:.1f} MB at once ({union * model.expert_bytes / 1e9:.3f} GB)")
    return trace, model, passes, requests, union, slots


def scenario_json(a, model, passes, requests, union, slots, policies):
    return {"trace": a.trace, "model": model.name, "dtype": model.dtype, "policy": ",".join(policies),
            "cache_gb": a.cache_gb, "slots": slots, "total_experts": model.moe_layers * model.experts,
            "expert_bytes": model.expert_bytes, "copy_bytes": model.copy_bytes, "chunks": a.chunks,
            "host_experts": min(a.host_experts or model.moe_layers * model.experts, model.moe_layers * model.experts),
            "max_requests": a.max_requests, "batch": a.batch, "gamma": a.gamma,
            "acceptance": a.acceptance if a.gamma else None, "seed": a.seed, "prefill": not a.no_prefill,
            "passes": len(passes), "requests": requests, "max_layer_union": union,
            "decode_tokens": sum(e for p in passes if p.phase != PREFILL for _, e in p.members),
            "gate_wait": not a.no_gate_wait}


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def dry_run(a, model, passes, scenario, policies, slots):
    total = model.moe_layers * model.experts
    records = []
    for name in policies:
        sched = Scheduler(name, slots, total, model.moe_layers, model.experts)
        for p in passes:
            for layer in range(model.moe_layers):
                sched.gate(layer, p.uses[layer])
        rec = {"policy": name, "capacity_slots": total if name == "resident" else slots}
        rec.update(sched.counts(model.copy_bytes))
        records.append(rec)
    doc = {"tool": "torch_peer", "dry_run": True, "scenario": scenario, "records": records}
    print(json.dumps(doc, indent=2))
    if a.json:
        write_json(a.json, doc)


def gpu_run(a, model, passes, scenario, policies, slots):
    try:
        import torch
    except ImportError as e:
        raise DeviceError(f"PyTorch is not installed ({e}); --dry-run needs no torch") from None
    if not torch.cuda.is_available() or a.device >= torch.cuda.device_count():
        raise DeviceError(f"no CUDA device {a.device} (torch {torch.__version__} sees {torch.cuda.device_count()})")
    device = torch.device("cuda", a.device)
    torch.cuda.set_device(device)
    total = model.moe_layers * model.experts
    max_tokens = max(max(p.tokens, len(p.members)) for p in passes)
    scenario.update({"torch": torch.__version__, "cuda": torch.version.cuda,
                     "device": torch.cuda.get_device_name(device), "resident_distinct": None})
    try:
        eager = EagerModel(torch, model, max_tokens, device)
        host = None
        if any(p != "resident" for p in policies):
            count = min(a.host_experts or total, total)
            print(f"torch_peer: pinning {count} host experts ({count * model.copy_bytes / 1e9:.1f} GB)", file=sys.stderr)
            host = HostStore(torch, model, count, a.chunks, device)
        copy_stream = torch.cuda.Stream(device)
        warm_up(torch, eager, passes, host, copy_stream, device)
        records = []
        for name in policies:
            if name == "resident":
                fit = (torch.cuda.mem_get_info(device)[0] - 2 * GIB) // model.matrix_bytes_bf16
                count = min(a.max_distinct, total) if a.max_distinct else max(1, min(total, fit))
                scenario["resident_distinct"] = count
            else:
                count = slots
            store = ExpertStore(torch, eager, model, name, count, host)
            sched = Scheduler(name, slots, count, model.moe_layers, model.experts)
            clock = run_policy(torch, eager, store, host, sched, passes, copy_stream, not a.no_gate_wait, name)
            rec = {"policy": name}
            rec.update(clock.record())
            rec.update(sched.counts(model.copy_bytes))
            rec["capacity_slots"] = total if name == "resident" else slots
            records.append(rec)
            del store
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            tp = rec["tpot_ms"]
            print(f"torch_peer {name}: TPOT {tp['mean']:.3f} ms (p50 {tp['p50']:.3f}, p99 {tp['p99']:.3f}) over "
                  f"{rec['decode_tokens']} tokens, {rec['experts_copied']} experts copied, {rec['total_s']:.2f} s; "
                  f"{model.name}, {Path(a.trace).name}, {scenario['device']}, torch {torch.__version__}")
    except torch.cuda.OutOfMemoryError as e:
        raise DeviceError(f"out of GPU memory: {str(e).splitlines()[0]} (lower --cache-gb or --max-distinct)") from None
    except RuntimeError as e:
        if "CUDA" not in str(e) and "cuda" not in str(e):
            raise
        raise DeviceError(f"CUDA failure: {str(e).splitlines()[0]}") from None
    if a.json:
        write_json(a.json, {"tool": "torch_peer", "scenario": scenario, "records": records})


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        policies = check_options(a)
        _, model, passes, requests, union, slots = open_scenario(a)
        scenario = scenario_json(a, model, passes, requests, union, slots, policies)
        if a.dry_run:
            dry_run(a, model, passes, scenario, policies, slots)
        else:
            gpu_run(a, model, passes, scenario, policies, slots)
    except InputError as e:
        print(f"torch_peer: error: {e}", file=sys.stderr)
        return 2
    except DeviceError as e:
        print(f"torch_peer: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
