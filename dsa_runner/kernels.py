"""DeepSeek Sparse Attention (DSA) math: index scores, top-k selection, sparse attention.

Implements section 2.1 of the DeepSeek-V3.2 report ("DeepSeek Sparse Attention"):

    I(t, s) = sum_j w(t, j) * ReLU(q(t, j) . k(s))          (lightning indexer, eq. 1)
    u(t)    = Attn(h(t), {c(s) | I(t, s) in Top-k(I(t, :))})   (sparse attention, eq. 2)

Tensor layout used throughout this module (B batch, T query tokens, S key tokens):

    q_I      (B, T, H_I, d_I)   index queries, one per index head
    w        (B, T, H_I)        per-head index weights of the query token
    k_I      (B, S, d_I)        index keys, one per token, shared by all index heads (MQA)
    I        (B, T, S)          index scores, float32, -inf where a key may not be selected
    top_k    (B, T, k)          indices of the selected keys, -1 where fewer than k exist
    query    (B, H, T, d)       main attention, as transformers hands it to attention functions
    key      (B, H_kv, S, d)    main keys   (H a multiple of H_kv: MHA, GQA or MQA)
    value    (B, H_kv, S, d_v)

Queries are aligned to the end of the keys: query t sits at key position S - T + t (the usual layout
with a KV cache). Which keys a query may see is given by ``allowed`` (B, T, S) (causality and padding),
or, for the GPU kernels, by causality plus ``kv_start`` (B,): the number of left-padding keys.

Every public function here is the single entry point for its step; it picks the implementation
(reference PyTorch, chunked PyTorch, Triton) by device and size. ``dsa_attention_reference`` is the
readable dense-with-mask definition the fast paths are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dsa_runner import triton_kernels, triton_topk

NEG_INF = float("-inf")
_NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
FP8_MAX = 448.0  # largest finite float8_e4m3fn


# --------------------------------------------------------------------------------------------
# masks


def causal_allowed(batch: int, t: int, s: int, device, kv_start: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, S) bool: query t (at key position s - t + i) may see keys up to its own position,
    and none of the first kv_start[b] (left padding) keys."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None].expand(batch, t, s)
    if kv_start is not None:
        allowed = allowed & (k_pos[None] >= kv_start.to(device)[:, None, None])
    return allowed


# --------------------------------------------------------------------------------------------
# FP8 (e4m3) quantisation with scaling


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim) symmetric e4m3 quantisation: x ~ x_fp8 * scale, scale float32 (..., 1)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    x_fp8 = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return x_fp8, scale


def fp8_supported(device: torch.device) -> bool:
    if device.type != "cuda" or not hasattr(torch, "float8_e4m3fn"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


# --------------------------------------------------------------------------------------------
# lightning indexer scores


def index_scores_reference(q_I: torch.Tensor, w: torch.Tensor, k_I: torch.Tensor,
                           allowed: torch.Tensor | None = None) -> torch.Tensor:
    """I(t, s) = sum_j w(t, j) * ReLU(q(t, j) . k(s)), float32, -inf where not allowed."""
    dots = torch.einsum("btjd,bsd->btjs", q_I.float(), k_I.float())
    I = torch.einsum("btj,btjs->bts", w.float(), F.relu(dots))
    if allowed is not None:
        I = I.masked_fill(~allowed, NEG_INF)
    return I


def index_scores(q_I: torch.Tensor, w: torch.Tensor, k_I: torch.Tensor, allowed: torch.Tensor | None = None,
                 *, k_scale: torch.Tensor | None = None, kv_start: torch.Tensor | None = None,
                 fp8: bool = False) -> torch.Tensor:
    """Index scores I (B, T, S) float32.

    CUDA + Triton: one fused kernel (scores, ReLU, weighted sum over heads, causal/padding mask), in
    FP8 e4m3 when ``fp8`` (q quantised per token and head, k per token; the positive scales commute
    with ReLU, so they are folded into w and applied per key). ``k_I`` may already be FP8 with its
    ``k_scale`` (B, S, 1), as kept in the index-key cache. Elsewhere: two batched matmuls.
    """
    if k_I.dtype == torch.float8_e4m3fn and not fp8:
        k_I = k_I.float() * k_scale
        k_scale = None
    B, T, H, D = q_I.shape
    pow2 = H & (H - 1) == 0 and D & (D - 1) == 0 and D >= 16
    if triton_kernels.available(q_I.device) and allowed is None and pow2:
        if fp8:
            q_fp8, w_eff = triton_kernels.quantize_queries_fp8(q_I, w)
            if k_I.dtype != torch.float8_e4m3fn:
                k_I, k_scale = quantize_fp8(k_I)
            return triton_kernels.index_scores(q_fp8, w_eff, k_I, k_scale.squeeze(-1), kv_start)
        return triton_kernels.index_scores(q_I, w.float(), k_I, None, kv_start)
    if k_I.dtype == torch.float8_e4m3fn:
        k_I = k_I.float() * k_scale
    S = k_I.shape[1]
    compute = torch.float32 if q_I.device.type == "cpu" else q_I.dtype
    k_t = k_I.to(compute).transpose(1, 2)  # (B, d_I, S)
    # dots (B, T*H, S) -> ReLU -> (B*T, 1, H) @ (B*T, H, S): the weighted sum over heads as a matmul
    dots = F.relu(torch.bmm(q_I.reshape(B, T * H, D).to(compute), k_t)).float()
    I = torch.bmm(w.reshape(B * T, 1, H).float(), dots.view(B * T, H, S)).view(B, T, S)
    if allowed is None:
        allowed = causal_allowed(B, T, S, q_I.device, kv_start)
    return I.masked_fill_(~allowed, NEG_INF)


# --------------------------------------------------------------------------------------------
# top-k selection


def _stable_top_k(I: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """topk with ties going to the most recent key: the score's float bits, mapped to an
    order-preserving integer, and the key position form one int64 sort key."""
    bits = (I.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float value
    positions = torch.arange(I.shape[-1], device=I.device, dtype=torch.int64)
    composite = (ordered.to(torch.int64) << 32) | positions
    values, indices = torch.topk(composite, k, dim=-1, sorted=False)
    neg_inf_key = torch.tensor(NEG_INF).view(torch.int32).item() ^ 0x7FFFFFFF
    return indices, (values >> 32) == neg_inf_key


def select_top_k(I: torch.Tensor, top_k: int, *, stable: bool | None = None) -> torch.Tensor:
    """Indices (B, T, k') of the k' = min(top_k, S) highest index scores per query, -1 for entries
    whose score is -inf (a query with fewer than top_k visible keys). Never selects a key that was
    masked out in I, hence never a future token.

    Equal scores are common (ReLU makes a score exactly 0 when every head scores the key negatively),
    and torch.topk breaks ties differently for different row lengths, so a prefill and a later decode
    step could pick different keys. With ``stable``, ties at the selection boundary go to the most
    recent key; rows with such ties (found with one comparison pass) are redone with an exact
    (score, position) sort key, the others keep the plain float topk. Default: stable on CPU; not on
    CUDA, where the extra pass costs (up to 2x the top-k time at 128K), the data-dependent branch
    would prevent CUDA-graph capture, and the FP8 indexer makes prefill and decode scores agree only
    to rounding anyway.

    CUDA with Triton: the radix select of triton_topk, whatever ``stable`` says: it breaks ties
    towards the most recent keys by construction and needs no host sync (1.8x torch.topk on an H200
    at 128K keys; slower than it below ~4K keys).
    """
    k = min(top_k, I.shape[-1])
    if I.device.type == "cuda" and triton_topk.available(I.device):
        return triton_topk.top_k(I, k)
    if stable is None:
        stable = I.device.type == "cpu"
    values, indices = torch.topk(I, k, dim=-1, sorted=False)
    if stable and k < I.shape[-1]:
        tau = values.min(dim=-1, keepdim=True).values  # the k-th largest score
        tied = torch.isfinite(tau.squeeze(-1)) & ((I >= tau).sum(-1) > k)
        if tied.any():
            fixed, fixed_inf = _stable_top_k(I[tied], k)
            indices[tied] = fixed
            values[tied] = torch.where(fixed_inf, NEG_INF, 0.0)
    return indices.masked_fill_(values == NEG_INF, -1)


def index_top_k(q_I: torch.Tensor, w: torch.Tensor, k_I: torch.Tensor, allowed: torch.Tensor, top_k: int, *,
                k_scale: torch.Tensor | None = None, kv_start: torch.Tensor | None = None, fp8: bool = False,
                max_elements: int = 1 << 22) -> torch.Tensor:
    """Index scores and top-k selection by query chunks: (B, T, k') selected key indices.

    Never holds more than ~max_elements scores at once, and a chunk only scores the keys up to its
    last query's position (causal trimming). Same result as select_top_k(index_scores(...)).
    """
    B, T = q_I.shape[:2]
    S = k_I.shape[1]
    k = min(top_k, S)
    chunk = max(1, min(T, max_elements // max(1, B * S)))
    out = torch.full((B, T, k), -1, dtype=torch.int64, device=q_I.device)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        s_end = S - T + t1  # keys after the chunk's last query are never visible
        I = index_scores(q_I[:, t0:t1], w[:, t0:t1], k_I[:, :s_end],
                         None if allowed is None else allowed[:, t0:t1, :s_end],
                         k_scale=None if k_scale is None else k_scale[:, :s_end], kv_start=kv_start, fp8=fp8)
        sel = select_top_k(I, k)
        out[:, t0:t1, : sel.shape[-1]] = sel
    return out


def selection_mask(top_k: torch.Tensor, S: int) -> torch.Tensor:
    """(B, T, S) bool mask of the selected keys."""
    mask = torch.zeros(*top_k.shape[:-1], S + 1, dtype=torch.bool, device=top_k.device)
    mask.scatter_(-1, torch.where(top_k < 0, S, top_k), True)
    return mask[..., :S]


# --------------------------------------------------------------------------------------------
# sparse attention


def dsa_attention_reference(query, key, value, top_k: torch.Tensor, scaling: float) -> torch.Tensor:
    """Dense attention restricted to the selected keys. Returns (B, T, H, d_v), the layout
    transformers expects from an attention function. The selection is shared by all heads."""
    B, H, T, d = query.shape
    H_kv = key.shape[1]
    q = query.float().view(B, H_kv, H // H_kv, T, d)
    scores = torch.einsum("bngtd,bnsd->bngts", q, key.float()) * scaling
    selected = selection_mask(top_k, key.shape[2])[:, None, None]
    probs = torch.softmax(scores.masked_fill(~selected, NEG_INF), dim=-1).nan_to_num(0.0)
    out = torch.einsum("bngts,bnsd->btngd", probs, value.float())
    return out.reshape(B, T, H, value.shape[-1]).to(query.dtype)


def _sparse_attention_masked(query, key, value, top_k, scaling):
    """Same as the reference, through SDPA with the selection as a boolean mask (fast on CPU)."""
    selected = selection_mask(top_k, key.shape[2])[:, None]
    # a query with no selected key (only possible for padding queries) would give NaN
    empty = ~selected.any(-1, keepdim=True)
    selected = selected | empty
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=selected, scale=scaling,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2)


def _sparse_attention_gather(query, key, value, top_k, scaling, chunk: int = 512):
    """Gathers the selected K/V rows per query token (once for all heads of a KV head) and runs
    batched matmuls over them."""
    B, H, T, d = query.shape
    H_kv, S = key.shape[1], key.shape[2]
    G = H // H_kv
    dv = value.shape[-1]
    k_flat = key.reshape(-1, d)
    v_flat = value.reshape(-1, dv)
    base = (torch.arange(B, device=query.device)[:, None] * H_kv
            + torch.arange(H_kv, device=query.device)[None, :]) * S  # row of (b, h, 0)
    out = query.new_empty(B, T, H, dv)
    for t0 in range(0, T, chunk):
        idx = top_k[:, t0:t0 + chunk]  # (B, C, k)
        C, n = idx.shape[1], idx.shape[2]
        valid = idx >= 0
        rows = (base[:, :, None, None] + idx.clamp(min=0)[:, None]).reshape(-1)
        k_sel = k_flat.index_select(0, rows).view(B * H_kv * C, n, d)
        v_sel = v_flat.index_select(0, rows).view(B * H_kv * C, n, dv)
        q = query[:, :, t0:t0 + C].reshape(B, H_kv, G, C, d).transpose(2, 3).reshape(B * H_kv * C, G, d)
        scores = torch.bmm(q, k_sel.transpose(1, 2)).float() * scaling
        scores = scores.view(B, H_kv, C, G, n).masked_fill(~valid[:, None, :, None, :], NEG_INF)
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0).to(v_sel.dtype).view(B * H_kv * C, G, n)
        o = torch.bmm(probs, v_sel).view(B, H_kv, C, G, dv)
        out[:, t0:t0 + C] = o.permute(0, 2, 1, 3, 4).reshape(B, C, H, dv)
    return out


def sparse_attention(query, key, value, top_k: torch.Tensor, scaling: float, *,
                     impl: str = "auto") -> torch.Tensor:
    """Attention of each query over its selected keys only; (B, T, H, d_v).

    impl: "reference", "masked" (SDPA + selection mask), "gather" (PyTorch gather, chunked),
    "triton" (gathers each selected row once per program, online softmax), or "auto".
    """
    if impl == "auto":
        if triton_kernels.available(query.device):
            impl = "triton"
        elif query.shape[2] == 1 or query.device.type == "cuda" or 4 * top_k.shape[-1] <= key.shape[2]:
            impl = "gather"
        else:
            impl = "masked"
    if impl == "reference":
        return dsa_attention_reference(query, key, value, top_k, scaling)
    if impl == "masked":
        return _sparse_attention_masked(query, key, value, top_k, scaling)
    if impl == "gather":
        return _sparse_attention_gather(query, key, value, top_k, scaling)
    if impl == "triton":
        return triton_kernels.sparse_attention(query, key, value, top_k, scaling)
    raise ValueError(f"unknown sparse attention implementation {impl!r}")


def dense_attention(query, key, value, allowed: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Plain attention over every allowed key (used when the selection covers every visible key)."""
    if allowed is None:
        causal = query.shape[2] == key.shape[2]
        gqa = key.shape[1] != query.shape[1]
        if query.device.type == "cuda":  # see dense_attention_masked
            with sdpa_kernel(_NO_CUDNN):
                out = F.scaled_dot_product_attention(query, key, value, is_causal=causal, scale=scaling,
                                                     enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(query, key, value, is_causal=causal, scale=scaling,
                                                 enable_gqa=gqa)
    else:
        return dense_attention_masked(query, key, value, allowed[:, None] | ~allowed.any(-1, keepdim=True)[:, None],
                                      scaling)
    return out.transpose(1, 2)


def dense_attention_masked(query, key, value, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """SDPA with a ready (B, 1, T, S) boolean mask in which every query row allows at least one key.

    On CUDA the cuDNN backend is left out: it builds an execution plan per new key length, i.e. at
    every decode step in every layer (measured on an H100: ~2 ms of CPU per call, 60 % of a step).
    """
    gqa = key.shape[1] != query.shape[1]
    if query.device.type == "cuda":
        with sdpa_kernel(_NO_CUDNN):
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2)


def dense_probs_head_sum(query, key, allowed: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Warm-up target p(t, :): dense attention probabilities summed over heads, L1-normalised.
    (B, T, S) float32. Computed without gradient (the main model is frozen)."""
    B, H, T, _ = query.shape
    groups = H // key.shape[1]
    with torch.no_grad():
        k = key.repeat_interleave(groups, dim=1).float()
        scores = torch.einsum("bhtd,bhsd->bhts", query.float(), k) * scaling
        if allowed is None:
            allowed = causal_allowed(B, T, key.shape[2], query.device)
        probs = torch.softmax(scores.masked_fill(~allowed[:, None], NEG_INF), -1).nan_to_num(0.0)
        p = probs.sum(1)
        return p / p.sum(-1, keepdim=True).clamp(min=1e-12)
