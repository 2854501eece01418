"""Find the decoder layers and MoE blocks of a Hugging Face causal LM, watch them with forward
hooks, and apply a router to any hidden state.

Works with the transformers 5 MoE layout shared by Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V2/V3 and their relatives: each MoE decoder layer holds a block (`mlp`,
`block_sparse_moe`, ...) with a router `gate` (a module with a `weight` of shape
[experts, hidden]) and an `experts` module that the block calls as
`experts(hidden_states, top_k_index, top_k_weights)`. The routing is read from that call, so what
is recorded is exactly what the model computed, whatever the router's rule (softmax top-k,
normalised or not, DeepSeek's sigmoid with group-limited top-k). Dense layers (DeepSeek's
`first_k_dense_replace`, Qwen2-MoE's `mlp_only_layers`) are skipped: MoE layers are numbered by
ordinal, as in the trace format.

The transformers 4 layout (experts as an nn.ModuleList, routing computed inside the block) is
refused with a message that says so, rather than recomputed by a rule that might differ.
"""

import functools

import torch
import torch.nn.functional as F

FFN_NAMES = ("mlp", "block_sparse_moe", "feed_forward", "moe", "ffn")
ATTN_NAMES = ("self_attn", "attention", "attn", "self_attention")


class LayoutError(RuntimeError):
    """The model does not have a layout this recorder understands; the message says what is missing."""


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_decoder_layers(model):
    """The nn.ModuleList of decoder layers (model.model.layers for every supported family)."""
    cfg = text_config(model)
    n = getattr(cfg, "num_hidden_layers", None)
    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return inner.layers
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and n is not None and len(mod) == n and name.endswith("layers"):
            return mod
    raise LayoutError(f"{type(model).__name__}: no decoder-layer list found (looked for model.layers and any "
                      f"'*layers' ModuleList of num_hidden_layers={n} entries)")


def find_attention(layer, what, index):
    """The layer's attention module (its input is the pre-attention, post-norm hidden state)."""
    for name in ATTN_NAMES:
        mod = getattr(layer, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise LayoutError(f"{what}: decoder layer {index} ({type(layer).__name__}) has no attention child named one of "
                      f"{ATTN_NAMES}; hidden state 'attn_input' needs it")


def is_moe_block(mod):
    return hasattr(mod, "gate") and hasattr(mod, "experts") and hasattr(mod.gate, "weight")


def find_ffn(layer):
    """(name, module) of the layer's feed-forward part: MoE block or dense MLP."""
    for name in FFN_NAMES:
        mod = getattr(layer, name, None)
        if isinstance(mod, torch.nn.Module):
            return name, mod
    for name, mod in layer.named_children():
        if is_moe_block(mod):
            return name, mod
    return None, None


class Layout:
    """Decoder layers, which of them are MoE, and the shape of the routing."""

    def __init__(self, model, what="model"):
        self.model = model
        self.what = what
        self.layers = find_decoder_layers(model)
        self.moe_blocks = []    # MoE block per MoE ordinal
        self.moe_decoder = []   # decoder-layer index per MoE ordinal
        self.ffns = []          # feed-forward module per decoder layer (MoE or dense)
        for i, layer in enumerate(self.layers):
            name, ffn = find_ffn(layer)
            if ffn is None:
                raise LayoutError(f"{what}: decoder layer {i} ({type(layer).__name__}) has no feed-forward "
                                  f"child named one of {FFN_NAMES}")
            self.ffns.append(ffn)
            if is_moe_block(ffn):
                if isinstance(ffn.experts, torch.nn.ModuleList):
                    raise LayoutError(
                        f"{what}: decoder layer {i}: {type(ffn).__name__}.experts is an nn.ModuleList (the "
                        f"transformers 4 layout, routing computed inside the block); this recorder reads the "
                        f"routing from the experts call of the transformers 5 layout: use transformers >= 5")
                self.moe_blocks.append(ffn)
                self.moe_decoder.append(i)
        cfg = text_config(model)
        self.hidden_size = int(cfg.hidden_size)
        self.num_layers = len(self.layers)
        if self.moe_blocks:
            self.experts = int(self.moe_blocks[0].gate.weight.shape[0])
            k = next((getattr(cfg, attr) for attr in ("num_experts_per_tok", "moe_top_k")
                      if getattr(cfg, attr, None)), None)
            if k is None:
                k = getattr(self.moe_blocks[0].gate, "top_k", None)
            if k is None:
                raise LayoutError(f"{what}: cannot tell top_k (config has neither num_experts_per_tok nor moe_top_k, "
                                  f"router has no top_k)")
            self.top_k = int(k)
            for m, blk in enumerate(self.moe_blocks):
                e = int(blk.gate.weight.shape[0])
                if e != self.experts:
                    raise LayoutError(f"{what}: MoE layer {m} has {e} experts, layer 0 has {self.experts}")
        else:
            self.experts = self.top_k = 0

    @property
    def moe_layers(self):
        return len(self.moe_blocks)

    def describe(self):
        blk = self.moe_blocks[0] if self.moe_blocks else None
        return {
            "class": type(self.model).__name__,
            "decoder_layers": self.num_layers,
            "moe_layers": self.moe_layers,
            "moe_decoder_layers": self.moe_decoder,
            "experts_per_layer": self.experts,
            "top_k": self.top_k,
            "hidden_size": self.hidden_size,
            "moe_block": type(blk).__name__ if blk is not None else None,
            "router": type(blk.gate).__name__ if blk is not None else None,
            "experts_module": type(blk.experts).__name__ if blk is not None else None,
        }


def _pre_hook(module, fn):
    """Forward pre-hook that sees keyword arguments too (torch >= 2.0); on older torch, positional
    arguments only."""
    try:
        return module.register_forward_pre_hook(fn, with_kwargs=True)
    except TypeError:
        return module.register_forward_pre_hook(lambda mod, args: fn(mod, args, {}))


def _flat(x, hidden):
    return x.reshape(-1, hidden)


class TargetHooks:
    """Forward hooks on every MoE layer of the target. After each forward:
    moe_input[m]  [N, H]  the MoE block's input (after the post-attention norm)
    index[m]      [N, K]  experts chosen (long), weights[m] [N, K] their gate weights (float32)
    layer_output[m] [N, H] output of the decoder layer holding MoE layer m (when asked for)
    attn_input[m] [N, H] input of that decoder layer's attention, after its input norm (when asked for)."""

    def __init__(self, layout, layer_output=False, attn_input=False):
        self.layout = layout
        L = layout.moe_layers
        self.moe_input = [None] * L
        self.index = [None] * L
        self.weights = [None] * L
        self.layer_output = [None] * L
        self.attn_input = [None] * L
        self.handles = []
        if attn_input:  # find every attention first, so a missing one fails before any hook is placed
            attns = [find_attention(layout.layers[d], layout.what, d) for d in layout.moe_decoder]
            for m, att in enumerate(attns):
                self.handles.append(_pre_hook(att, functools.partial(self._attn_in, m)))
        for m, blk in enumerate(layout.moe_blocks):
            self.handles.append(_pre_hook(blk, functools.partial(self._block_in, m)))
            self.handles.append(_pre_hook(blk.experts, functools.partial(self._experts_in, m)))
            if layer_output:
                layer = layout.layers[layout.moe_decoder[m]]
                self.handles.append(layer.register_forward_hook(functools.partial(self._layer_out, m)))

    def clear(self):
        L = self.layout.moe_layers
        self.moe_input, self.index, self.weights = [None] * L, [None] * L, [None] * L
        self.layer_output, self.attn_input = [None] * L, [None] * L

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _block_in(self, m, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if x is None:
            raise LayoutError(f"MoE layer {m}: {type(module).__name__} was called without a hidden-state argument")
        self.moe_input[m] = _flat(x.detach(), self.layout.hidden_size)

    def _experts_in(self, m, module, args, kwargs):
        values = list(args) + list(kwargs.values())
        tensors = [v for v in values if torch.is_tensor(v)]
        idx = next((t for t in tensors if t.dim() == 2 and not t.is_floating_point()), None)
        if idx is None:
            raise LayoutError(f"MoE layer {m}: {type(module).__name__} was called without an integer [tokens, top_k] "
                              f"index tensor (got {[tuple(t.shape) for t in tensors]}); unknown experts call")
        w = next((t for t in tensors if t.is_floating_point() and t.dim() == 2 and t.shape[0] == idx.shape[0]
                  and t.shape[1] in (idx.shape[1], self.layout.experts) and t.shape[1] != self.layout.hidden_size), None)
        if w is None:
            raise LayoutError(f"MoE layer {m}: {type(module).__name__} was called without a [tokens, top_k] weight tensor")
        if w.shape[1] != idx.shape[1]:
            w = w.gather(1, idx)
        self.index[m] = idx.detach().long()
        self.weights[m] = w.detach().float()

    def _attn_in(self, m, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        if x is None:
            raise LayoutError(f"MoE layer {m}: {type(module).__name__} was called without a hidden-state argument")
        self.attn_input[m] = _flat(x.detach(), self.layout.hidden_size)

    def _layer_out(self, m, module, args, output):
        y = output[0] if isinstance(output, (tuple, list)) else output
        self.layer_output[m] = _flat(y.detach(), self.layout.hidden_size)

    def check_complete(self, tokens):
        for m in range(self.layout.moe_layers):
            for name, arr in (("routing", self.index[m]), ("MoE input", self.moe_input[m])):
                if arr is None or arr.shape[0] != tokens:
                    got = None if arr is None else tuple(arr.shape)
                    raise LayoutError(f"MoE layer {m}: expected {name} for {tokens} tokens from the last forward, "
                                      f"got {got}")


class FfnInputHooks:
    """Input of every decoder layer's feed-forward part (the post-attention, post-norm hidden
    state), for a draft model: inputs[i] is [N, H] after each forward."""

    def __init__(self, layout):
        self.layout = layout
        self.inputs = [None] * layout.num_layers
        self.handles = [_pre_hook(ffn, functools.partial(self._ffn_in, i)) for i, ffn in enumerate(layout.ffns)]

    def _ffn_in(self, i, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        self.inputs[i] = _flat(x.detach(), self.layout.hidden_size)

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def router_scores(block, x):
    """Per-expert score of the router for x [N, H]: softmax of the logits, or for routers with an
    e_score_correction_bias (DeepSeek-V3 style) the sigmoid score plus that bias."""
    gate = block.gate
    w = gate.weight
    logits = F.linear(x.to(w.dtype), w, getattr(gate, "bias", None)).float()
    bias = getattr(gate, "e_score_correction_bias", None)
    if bias is not None:
        return logits.sigmoid() + bias.float()
    return logits.softmax(dim=-1)


@torch.no_grad()
def route(block, x):
    """Apply the block's own router to x [N, H] and return (index [N, K] long, weight [N, K]
    float32): exactly what the block would choose for that hidden state."""
    gate = block.gate
    x = x.to(gate.weight.dtype)
    out = gate(x)
    if isinstance(out, (tuple, list)):
        ints = [t for t in out if torch.is_tensor(t) and not t.is_floating_point()]
        if not ints:
            raise LayoutError(f"{type(gate).__name__} returned a tuple without an index tensor")
        idx = ints[0]
        floats = [t for t in out if torch.is_tensor(t) and t.is_floating_point()]
        w = next((t for t in floats if t.shape == idx.shape), None)
        if w is None:
            dense = next(t for t in floats if t.shape[-1] == block.gate.weight.shape[0] and t is not floats[0])
            w = dense.gather(1, idx)
        return idx.long(), w.float()
    if hasattr(block, "route_tokens_to_experts"):
        a, b = block.route_tokens_to_experts(out)
        idx, w = (a, b) if not a.is_floating_point() else (b, a)
        return idx.long(), w.float()
    raise LayoutError(f"{type(gate).__name__} returned router logits and {type(block).__name__} has no "
                      f"route_tokens_to_experts: unknown routing rule")


@torch.no_grad()
def ranked_candidates(block, x, candidates):
    """Ranked expert predictions of the block's router for x [N, H]: the router's own top-k
    (by gate weight), then further experts by router score, up to `candidates` per row.
    Returns (experts [N, C] long, scores [N, C] float32: the router score of each candidate)."""
    idx, w = route(block, x)
    order = torch.argsort(w, dim=1, descending=True, stable=True)
    idx = idx.gather(1, order)
    scores = router_scores(block, x)
    k = idx.shape[1]
    if candidates <= k:
        chosen = idx[:, :candidates]
    else:
        rest = scores.clone()
        rest.scatter_(1, idx, float("-inf"))
        extra = torch.topk(rest, candidates - k, dim=1).indices
        chosen = torch.cat([idx, extra], dim=1)
    return chosen, scores.gather(1, chosen)
