"""A compact decode step for Llama-family models: one new token per row, without transformers' forward.

transformers' Llama forward plus the DSA hooks issue thousands of small ops per decode step (module
calls, mask building, cache bookkeeping, per-layer hooks); on a 2-core CPU that Python overhead, not the
arithmetic, bounds a 135M model. ``CompactDecoder.step`` does the same maths as a plain loop over the
layers:

    h = embed(token)
    per layer:  x = rms_norm(h);  [q | k | v | k_I] = x @ W_qkvi          (one fused projection)
                rotary(q, k) from a precomputed cos/sin table indexed by position
                k, v -> the engine's KV cache in place; k_I -> LayerNorm, indexer RoPE -> index-key layer
                o = SDPA(q, K, V, left-padding mask)          (S <= top_k: the selection is every key)
                  | DSA: indexer scores + top-k + sparse attention through ``kernels`` (S > top_k)
                h += o @ W_o;  x = rms_norm(h);  [g | u] = x @ W_gu;  h += (silu(g) * u) @ W_down
    logits = lm_head(rms_norm(h))

The weights are the model's own: the fused projections are built once, and the model's q/k/v/indexer-key
and gate/up linears are then re-pointed at row slices of the fused tensors (no second copy in memory).
Both weight formats of ``weights.Int8Linear`` (int8 + per-row scale for <= SMALL_BATCH rows, bfloat16
above) fuse exactly: per-row scales concatenate.

Prefill stays on the transformers forward. ``step`` returns None for what it does not cover (a DSA
recorder, "dense_indexed" mode, an FP8 indexer), and the engine then runs the transformers forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsa_runner import kernels, triton_kernels
from dsa_runner.indexer import _rotate, rope_tables
from dsa_runner.weights import SMALL_BATCH, Int8Linear


class _Fused:
    """Several linears with one input, as one (concatenated along the output rows)."""

    __slots__ = ("weight", "w_int8", "scale", "splits")

    def __init__(self, linears: list[nn.Module]):
        self.splits = [lin.out_features if hasattr(lin, "out_features") else lin.weight.shape[0] for lin in linears]
        int8 = all(isinstance(lin, Int8Linear) for lin in linears)
        # ordinary tensors even when the engine is built under inference_mode: the model's own linears end up
        # reading them, and an inference tensor there would stop the model from ever training again (warm-up)
        with torch.inference_mode(False), torch.no_grad():
            self.weight = torch.cat([lin.weight for lin in linears]).contiguous()
            self.w_int8 = torch.cat([lin.w_int8 for lin in linears]).contiguous() if int8 else None
            self.scale = torch.cat([lin.scale for lin in linears]).contiguous() if int8 else None
        # the model's linears now read slices of the fused tensors (same values, one copy)
        start = 0
        for lin, n in zip(linears, self.splits):
            lin.weight = nn.Parameter(self.weight[start:start + n], requires_grad=lin.weight.requires_grad)
            if int8:
                lin.w_int8 = self.w_int8[start:start + n]
                lin.scale = self.scale[start:start + n]
            start += n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_int8 is not None:
            out_dtype = x.dtype
            if x.dtype != torch.bfloat16:
                x = x.to(torch.bfloat16)
            if x.shape[0] <= SMALL_BATCH:
                y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.w_int8, self.scale)
            else:
                y = F.linear(x, self.weight)
            return y if y.dtype == out_dtype else y.to(out_dtype)
        return F.linear(x, self.weight)


def _text_config(model):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def unsupported_reason(model) -> str | None:
    """Why the compact path cannot run this model (None: it can)."""
    cfg = _text_config(model)
    if getattr(cfg, "model_type", None) != "llama":
        return f"model type {getattr(cfg, 'model_type', None)!r} (only llama)"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')!r}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "no model.layers / lm_head"
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(getattr(lin, "bias", None) is not None for lin in linears):
            return "linear layers with bias"
        if len({type(lin) for lin in linears}) != 1 or not isinstance(linears[0], (nn.Linear, Int8Linear)):
            return "mixed or unknown linear types"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    return None


class CompactDecoder:
    """The decode step of one (DSA-)Llama model; build once per model (re-points its weights)."""

    def __init__(self, model):
        reason = unsupported_reason(model)
        if reason is not None:
            raise TypeError(f"compact decode does not support this model: {reason}")
        cfg = _text_config(model)
        inner = model.model
        self.model = model
        self.embed = inner.embed_tokens
        self.final_norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = model.lm_head
        self.num_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.dtype = self.embed.weight.dtype
        device = self.embed.weight.device
        # rotary tables (position -> cos/sin), built the way transformers builds them per step
        rot = inner.rotary_emb
        positions = torch.arange(getattr(cfg, "max_position_embeddings", 8192), device=device, dtype=torch.float32)
        freqs = positions[:, None] * rot.inv_freq.to(device=device, dtype=torch.float32)[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * rot.attention_scaling).to(self.dtype)
        self.sin = (emb.sin() * rot.attention_scaling).to(self.dtype)
        # DSA
        self.indexers = getattr(model, "dsa_indexers", None)
        self.settings = getattr(model, "dsa_settings", None)
        self.dsa = self.indexers is not None and (self.settings is None or self.settings.mode != "dense")
        self.layers = []
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            indexer = self.indexers.layers[i] if self.dsa else None
            fuse_key = (indexer is not None and type(indexer.wk) is type(attn.q_proj)
                        and indexer.wk.weight.dtype == attn.q_proj.weight.dtype
                        and getattr(indexer.wk, "bias", None) is None)
            if fuse_key:
                qkv.append(indexer.wk)
            self.layers.append(dict(
                ln1=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                ln2=(layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                qkv=_Fused(qkv), o=attn.o_proj, gate_up=_Fused([mlp.gate_proj, mlp.up_proj]), down=mlp.down_proj,
                indexer=indexer, key_fused=fuse_key))

    # ------------------------------------------------------------------------------------------

    def covers(self) -> bool:
        """Whether ``step`` can run with the model's current DSA state: the indexers it was built with,
        DSA on or off as then, no recorder, no FP8 indexer, mode "sparse" (else: the transformers forward)."""
        s = self.settings
        active = getattr(self.model, "dsa_indexers", None) is not None and (s is None or s.mode != "dense")
        if active != self.dsa:
            return False
        if not self.dsa:
            return True
        return (self.model.dsa_indexers is self.indexers and s.recorder is None and not s.fp8
                and s.mode == "sparse")

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor | None:
        """tokens (B,), positions (B,) long, mask (B, S) with the new column included (0 = padding);
        appends to ``cache`` (the engine's SlackLayer cache) and returns the logits (B, V), or None when
        this step needs the transformers forward."""
        if not self.covers():
            return None
        B = tokens.shape[0]
        S = mask.shape[1]
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        qn, kvn = H * D, Hkv * D
        layers = cache.layers
        sparse = self.dsa and S > self.settings.top_k
        cos = self.cos[positions][:, None, None, :]  # (B, 1, 1, D)
        sin = self.sin[positions][:, None, None, :]
        allowed = mask.bool()  # (B, S)
        attn_mask = allowed[:, None, None, :]  # (B, 1, 1, S); the new column is always allowed
        if self.dsa:
            icfg = self.indexers.cfg
            pos2 = positions[:, None]
            itables = rope_tables(pos2, icfg.rope_dim, icfg.rope_theta) if icfg.rope_dim else None
            empty = torch.empty(B, 1, 1, 0, dtype=self.dtype, device=tokens.device)
            if sparse:
                use_kernel = (triton_kernels.available(tokens.device) and icfg.index_heads & (icfg.index_heads - 1) == 0
                              and icfg.index_head_dim & (icfg.index_head_dim - 1) == 0 and icfg.index_head_dim >= 16)
                kv_start = allowed.int().argmax(-1) if use_kernel else None
                sel_allowed = None if use_kernel else allowed[:, None, :]
        h = self.embed(tokens)  # (B, hidden)
        for i, L in enumerate(self.layers):
            x = _rms_norm(h, *L["ln1"])
            proj = L["qkv"](x)
            q = proj[:, :qn].view(B, H, 1, D)
            k = proj[:, qn:qn + kvn].view(B, Hkv, 1, D)
            v = proj[:, qn + kvn:qn + 2 * kvn].view(B, Hkv, 1, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = layers[i].update(k, v)
            if self.dsa:
                idx = L["indexer"]
                raw = proj[:, qn + 2 * kvn:] if L["key_fused"] else idx.wk(x.to(idx.k_norm.weight.dtype))
                k_I = F.layer_norm(raw[:, None], (raw.shape[-1],), idx.k_norm.weight, idx.k_norm.bias,
                                   idx.k_norm.eps)
                k_I = _rotate(k_I, pos2, icfg.rope_dim, icfg.rope_theta, itables)  # (B, 1, d_I)
                all_k_I, _ = layers[self.num_layers + i].update(k_I[:, None], empty)
            if sparse:
                xi = x.to(idx.k_norm.weight.dtype)[:, None]
                q_I = _rotate(idx.wq(xi).view(B, 1, icfg.index_heads, icfg.index_head_dim), pos2,
                              icfg.rope_dim, icfg.rope_theta, itables)
                w_I = idx.weights_proj(xi) * idx.w_scale
                top_k = kernels.index_top_k(q_I, w_I, all_k_I[:, 0], sel_allowed, self.settings.top_k,
                                            kv_start=kv_start)
                o = kernels.sparse_attention(q, keys, values, top_k, self.scaling, impl=self.settings.sparse_impl)
            else:
                o = kernels.dense_attention_masked(q, keys, values, attn_mask, self.scaling)
            h = h + L["o"](o.reshape(B, qn))
            x = _rms_norm(h, *L["ln2"])
            gu = L["gate_up"](x)
            inter = gu.shape[-1] // 2
            h = h + L["down"](F.silu(gu[:, :inter]) * gu[:, inter:])
        return self.lm_head(_rms_norm(h, *self.final_norm))


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalised in float32, rounded to the activation dtype, then times the weight (in
    two steps, as transformers does, so bfloat16 rounds the same way)."""
    return weight * F.rms_norm(h, (h.shape[-1],), None, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
