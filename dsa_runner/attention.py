"""DSA as a transformers attention implementation ("dsa").

How it plugs into a transformers causal LM (Llama, Qwen2, Qwen3, ... : any model whose attention
modules call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``):

* each attention module gets its layer's ``LightningIndexer``; a forward pre-hook on the module sees
  the hidden states it receives (the report's h_t), runs the indexer on them and appends the new index
  keys to the KV cache;
* the registered attention function ``dsa_attention_forward`` receives the projected, rotated
  query/key/value (keys already include the cache), computes the index scores I, selects the top-k
  keys per query (one selection shared by all heads: MQA mode) and runs attention over them only.

Index keys in the cache: they are kept in the transformers ``Cache`` object itself, as extra layers
``num_hidden_layers + layer_idx`` (keys: the index keys (B, 1, S, d_I), FP8 ones stored as their
uint8 bytes so every tensor op applies; values: their FP8 scales (B, 1, S, 1), or an empty (B, 1, S, 0)). Every cache-wide operation (``batch_repeat_interleave`` for n
samples sharing a prefill, ``batch_select_indices``, ``reorder_cache``, ``crop``, ``reset``) loops over all
layers, so the index keys follow the main K/V without any code of ours. ``len(cache)`` is therefore
2 * num_hidden_layers; ``get_seq_length()`` (layer 0) is unaffected.

When a query sees at most top_k keys the selection is every visible key, and DSA equals dense
attention exactly; that case runs dense attention directly (the index keys are still cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from dsa_runner import kernels, native_prefill, triton_kernels
from dsa_runner.indexer import LightningIndexer, rope_tables

ATTN_NAME = "dsa"


@dataclass
class DSASettings:
    """Run-time switches shared by all layers of one model."""

    top_k: int = 2048
    # "sparse": DSA. "dense": the plain model (indexers not run). "dense_indexed": dense attention
    # output, indexers run and recorded (dense warm-up, recall evaluation).
    mode: str = "sparse"
    sparse_impl: str = "auto"  # see kernels.sparse_attention
    fp8: bool = False  # FP8 (e4m3) indexer (CUDA, compute capability >= 8.9 only)
    detach_indexer_input: bool = True  # the indexer never sends gradient into the main model
    # called by every layer with a LayerRecord when set (warm-up and evaluation)
    recorder: Callable[["LayerRecord"], None] | None = None
    record_grad: bool = False  # keep the graph from I back to the indexer weights


@dataclass
class LayerRecord:
    """What warm-up and evaluation need from one layer's forward."""

    layer_idx: int
    query: torch.Tensor  # (B, H, T, d), detached
    key: torch.Tensor  # (B, H_kv, S, d), detached
    allowed: torch.Tensor  # (B, T, S) bool
    scaling: float
    I: torch.Tensor  # (B, T, S) float32, -inf where not allowed; has grad when record_grad
    top_k: torch.Tensor  # (B, T, k) selection used (or that would be used) by this layer


@dataclass
class _IndexerStep:
    q_I: torch.Tensor | None  # None: keys-only step (top-k covers every visible key: dense attention)
    w: torch.Tensor | None
    k_I: torch.Tensor  # all index keys so far (B, S, d_I), FP8 when k_scale is given
    k_scale: torch.Tensor | None = None


@dataclass
class DSALayer:
    """Per attention module: its indexer, the shared settings, the step handed from hook to attention."""

    layer_idx: int
    num_layers: int
    indexer: LightningIndexer
    settings: DSASettings
    step: _IndexerStep | None = field(default=None, repr=False)
    shared: "_ForwardShared | None" = field(default=None, repr=False)


class _ForwardShared:
    """What every layer of one forward would otherwise recompute: the indexer's RoPE tables (from the
    ``position_ids`` tensor all layers receive) and the dense attention mask (from the mask transformers
    built once per forward). Keyed on the identity of those tensors; layer 0 always recomputes, so a
    tensor changed in place between two forwards is never served stale."""

    __slots__ = ("positions", "tables", "mask_src", "mask_key", "mask", "causal_src", "causal_key", "causal")

    def __init__(self):
        self.positions = self.tables = self.mask_src = self.mask_key = self.mask = None
        self.causal_src = self.causal_key = self.causal = None

    def plain_causal(self, layer: DSALayer, attention_mask, allowed: torch.Tensor) -> bool:
        """``allowed`` (B, T, S) equals causality aligned to the end of the keys (no left padding)."""
        if attention_mask is None:
            return True
        key = tuple(allowed.shape)
        if layer.layer_idx == 0 or self.causal_src is not attention_mask or self.causal_key != key:
            B, T, S = key
            self.causal = bool(torch.equal(allowed, kernels.causal_allowed(B, T, S, allowed.device)))
            self.causal_src, self.causal_key = attention_mask, key
        return self.causal

    def rope(self, layer: DSALayer, positions_src: torch.Tensor | None, positions: torch.Tensor):
        cfg = layer.indexer.cfg
        if cfg.rope_dim == 0:
            return None
        if positions_src is None:  # positions made up from the cache length: not shared
            return rope_tables(positions, cfg.rope_dim, cfg.rope_theta)
        if layer.layer_idx == 0 or self.positions is not positions_src or self.tables[0].shape[:2] != positions.shape:
            self.positions, self.tables = positions_src, rope_tables(positions, cfg.rope_dim, cfg.rope_theta)
        return self.tables

    def dense_mask(self, layer: DSALayer | None, attention_mask: torch.Tensor, B: int, T: int, S: int, device):
        key = (B, T, S)
        if (layer is None or layer.layer_idx == 0 or self.mask_src is not attention_mask
                or self.mask_key != key):
            allowed = allowed_from_mask(attention_mask, B, T, S, device)
            # a query with no allowed key (padding) attends everything instead of producing NaN
            self.mask = allowed[:, None] | ~allowed.any(-1, keepdim=True)[:, None]
            self.mask_src, self.mask_key = attention_mask, key
        return self.mask


# --------------------------------------------------------------------------------------------
# index keys inside the transformers Cache


def _index_cache_layer(cache, layer: DSALayer):
    from transformers.cache_utils import DynamicLayer

    idx = layer.num_layers + layer.layer_idx
    while len(cache.layers) <= idx:
        cache.layers.append(DynamicLayer())
    return cache.layers[idx]


def cache_index_keys(cache, layer: DSALayer, k_I: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Appends new index keys (B, T, d_I) to the cache; returns all of them (B, S, d_I) (+ FP8 scales)."""
    cache_layer = _index_cache_layer(cache, layer)
    if layer.settings.fp8:
        k_fp8, scale = kernels.quantize_fp8(k_I)
        keys, scales = cache_layer.update(k_fp8.view(torch.uint8)[:, None], scale[:, None])
        return keys[:, 0].view(torch.float8_e4m3fn), scales[:, 0]
    keys, _ = cache_layer.update(k_I[:, None], k_I.new_empty(*k_I.shape[:2], 0)[:, None])
    return keys[:, 0], None


def _indexer_pre_hook(module, args, kwargs):
    layer: DSALayer | None = module.__dict__.get("_dsa")
    if layer is None or layer.settings.mode == "dense":
        return None
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    cache = None  # the keyword changed across transformers releases (past_key_value(s), then cache)
    for name in ("past_key_values", "past_key_value", "cache"):
        if kwargs.get(name) is not None:
            cache = kwargs[name]
            break
    B, T, _ = hidden.shape
    positions_src = positions = kwargs.get("position_ids")
    if positions is None:
        past = cache.get_seq_length(layer.layer_idx) if cache is not None else 0
        positions = torch.arange(past, past + T, device=hidden.device)[None]
    positions = positions.expand(B, T)
    settings = layer.settings
    # index queries and weights are only read when top-k can leave keys out (or when recording):
    # with at most top_k keys in view the step needs the index keys alone (they go to the cache)
    S = T + (_index_cache_layer(cache, layer).get_seq_length() if cache is not None else 0)
    keys_only = settings.mode == "sparse" and settings.recorder is None and S <= settings.top_k
    h = hidden.detach() if settings.detach_indexer_input else hidden
    dtype = layer.indexer.k_norm.weight.dtype  # (the projections may be swapped for quantised ones)
    if h.dtype != dtype:
        h = h.to(dtype)
    shared = layer.shared if layer.shared is not None else _ForwardShared()
    tables = shared.rope(layer, positions_src, positions)
    with torch.set_grad_enabled(torch.is_grad_enabled() and settings.record_grad):
        q_I, w, k_I = layer.indexer(h, positions, tables=tables, keys_only=keys_only)
    k_scale = None
    if cache is not None:
        k_I, k_scale = cache_index_keys(cache, layer, k_I if settings.record_grad else k_I.detach())
    layer.step = _IndexerStep(q_I, w, k_I, k_scale)
    return None


# --------------------------------------------------------------------------------------------
# the attention function


def allowed_from_mask(attention_mask: torch.Tensor | None, B: int, T: int, S: int, device) -> torch.Tensor:
    """(B, T, S) bool of the keys each query may attend, from the mask transformers built (bool or
    additive float, (B or 1, 1, T, S)), or plain causality when it passed None."""
    if attention_mask is None:
        return kernels.causal_allowed(B, T, S, device)
    mask = attention_mask[:, 0, :, -S:] if attention_mask.dim() == 4 else attention_mask
    if mask.dtype != torch.bool:
        mask = mask == 0
    return mask.expand(B, T, S)


def _kv_start(allowed: torch.Tensor) -> torch.Tensor:
    """Left-padding length per sequence: keys before the first one the last query may see."""
    return allowed[:, -1].int().argmax(-1)


def dsa_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: (B, H, T, d) q/k/v -> ((B, T, H, d_v), None)."""
    layer: DSALayer | None = module.__dict__.get("_dsa")
    B, H, T, d = query.shape
    S = key.shape[2]
    scaling = scaling if scaling is not None else d ** -0.5
    settings = layer.settings if layer is not None else DSASettings(mode="dense")
    step = layer.step if layer is not None else None
    if layer is not None:
        layer.step = None  # one step per forward: never reuse a stale one
    if settings.mode == "dense" or step is None:
        return _dense(layer, query, key, value, attention_mask, scaling), None
    if step.k_I.shape[1] != S:
        raise RuntimeError(f"layer {layer.layer_idx}: {step.k_I.shape[1]} index keys for {S} keys; "
                           "was the cache changed without going through the Cache object?")
    if step.q_I is None:  # keys-only step: S <= top_k, the selection is every visible key
        return _dense(layer, query, key, value, attention_mask, scaling), None

    allowed = allowed_from_mask(attention_mask, B, T, S, query.device)
    H_I, d_I = step.q_I.shape[-2:]
    use_kernel = (triton_kernels.available(query.device) and H_I & (H_I - 1) == 0
                  and d_I & (d_I - 1) == 0 and d_I >= 16)
    top_k = None
    if settings.recorder is not None:  # warm-up / evaluation: the full score matrix, with gradient
        I = kernels.index_scores(step.q_I, step.w, step.k_I, allowed, k_scale=step.k_scale, fp8=settings.fp8)
        with torch.no_grad():
            top_k = kernels.select_top_k(I.detach(), settings.top_k)
        settings.recorder(LayerRecord(layer.layer_idx, query.detach(), key.detach(), allowed, scaling, I, top_k))
    elif S > settings.top_k and settings.mode == "sparse":
        if (not use_kernel and native_prefill.applies(query, key, value, step.q_I, step.k_I, step.k_scale)
                and _plain_causal(layer, attention_mask, allowed)):
            # CPU: scores, top-k and attention per query row in C (same selection as below)
            return native_prefill.sparse_prefill(query, key, value, step.q_I, step.w, step.k_I, settings.top_k,
                                                 scaling), None
        kv_start = _kv_start(allowed) if use_kernel else None
        with torch.no_grad():
            top_k = kernels.index_top_k(step.q_I, step.w, step.k_I, None if use_kernel else allowed,
                                        settings.top_k, k_scale=step.k_scale, kv_start=kv_start, fp8=settings.fp8)
    if S <= settings.top_k or settings.mode == "dense_indexed":  # S <= top_k: selection = all visible keys
        out = _dense(layer, query, key, value, attention_mask, scaling)
    else:
        out = kernels.sparse_attention(query, key, value, top_k, scaling, impl=settings.sparse_impl)
    return out, None


def _plain_causal(layer: DSALayer, attention_mask, allowed: torch.Tensor) -> bool:
    """Whether ``allowed`` is plain causality (no padding), what the C path assumes; once per forward."""
    shared = layer.shared if layer.shared is not None else _ForwardShared()
    return shared.plain_causal(layer, attention_mask, allowed)


def _dense(layer: DSALayer | None, query, key, value, attention_mask, scaling: float) -> torch.Tensor:
    """Dense attention over every allowed key; the boolean mask is built once per forward (all layers
    receive the same mask from transformers)."""
    if attention_mask is None:
        return kernels.dense_attention(query, key, value, None, scaling)
    B, _, T, _ = query.shape
    shared = layer.shared if layer is not None and layer.shared is not None else _ForwardShared()
    mask = shared.dense_mask(layer, attention_mask, B, T, key.shape[2], query.device)
    return kernels.dense_attention_masked(query, key, value, mask, scaling)


def register() -> None:
    """Registers "dsa" with transformers' attention and attention-mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, dsa_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in order."""
    modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not modules:
        raise TypeError(f"{type(model).__name__}: no attention modules with q_proj/layer_idx found")
    return sorted(modules, key=lambda m: m.layer_idx)


def install(model, indexers, settings: DSASettings) -> None:
    """Attaches one indexer per attention module and switches the model to the "dsa" implementation."""
    register()
    modules = attention_modules(model)
    shared = _ForwardShared()
    for module in modules:
        module.__dict__["_dsa"] = DSALayer(module.layer_idx, len(modules), indexers.layers[module.layer_idx], settings,
                                           shared=shared)
        if not getattr(module, "_dsa_hooked", False):
            module.register_forward_pre_hook(_indexer_pre_hook, with_kwargs=True)
            module._dsa_hooked = True
    model.config._attn_implementation = ATTN_NAME
    for sub in model.modules():  # sub-configs (text_config, ...) share the switch
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = ATTN_NAME
