"""Triton kernels for MLA in MQA mode (DeepSeek's decode layout): one latent KV head shared by all query heads.

Each cached token is one row of ``d`` = 576 values (512 latent + 64 RoPE); the value of a key is the first
``dv`` = 512 values of the same row. Queries are the absorbed per-head queries (H = 128 heads x 576).

One kernel serves both attention forms the DSA benchmark compares:

- dense decode (flash-decoding): every cached row of the sequence, the keys cut into ``splits`` contiguous
  ranges so that a batch of a few sequences still fills the GPU, each range writing a partial output and
  its log-sum-exp, merged by a second small kernel;
- DSA's sparse attention: only the rows listed in ``indices`` (B, T, k), gathered ``block_n`` at a time, in
  decode (split over the k selected rows the same way) and in prefill (one program per query token).

A program takes one (token, split, block of heads): its gathered rows are used for all the heads of the
block (tensor-core dots with M = block of heads), and when the value tile is the whole latent the key tile
loaded for Q.K^T is reused as the value tile (no second load). The head blocks of one (token, split) are
the fastest-varying program index, so they run together and the second one reads the rows from L2.
Limits seen on an H200: the 64-head query tile stays in shared memory (72 KB) beside two stages of 64 rows,
so one program fits per SM, and the kernel reaches about a third of the tensor-core rate (bench/RESULTS.md).

``mqa_attention_reference`` is the plain PyTorch definition (runs anywhere; tests compare both).
"""

from __future__ import annotations

import torch

from dsa_runner.triton_kernels import HAVE_TRITON, _pow2, _split_dim, available  # noqa: F401 - available re-exported

if HAVE_TRITON:  # pragma: no cover - depends on the machine
    import triton
    import triton.language as tl

LOG2E = 1.4426950408889634


def mqa_attention_reference(q: torch.Tensor, kv: torch.Tensor, dv: int, scaling: float,
                            indices: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, T, H, d), kv (B, S, d), value = kv[..., :dv]; indices (B, T, k) with -1 for no key, or None
    for every key (no causal mask: decode). Returns (B, T, H, dv) in q's dtype, computed in float32."""
    scores = torch.einsum("bthd,bsd->bths", q.float(), kv.float()) * scaling
    if indices is not None:
        S = kv.shape[1]
        keep = torch.zeros(*indices.shape[:2], S + 1, dtype=torch.bool, device=q.device)
        keep.scatter_(-1, torch.where(indices < 0, S, indices.long()), True)
        scores = scores.masked_fill(~keep[:, :, None, :S], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bths,bsd->bthd", probs, kv[..., :dv].float()).to(q.dtype)


if HAVE_TRITON:  # pragma: no cover - depends on the machine

    @triton.jit
    def _mqa_split_kernel(Q, KV, IDX, O, OP, LSE, T, N_KEYS, SPLIT_LEN, qk_scale,
                          sqb, sqt, sqh, skb, sks, sib, sit, sob, sot, soh, NSPLIT,
                          GP: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                          NVB: tl.constexpr, BN: tl.constexpr, H: tl.constexpr, PARTIAL: tl.constexpr,
                          SPARSE: tl.constexpr, V_IS_K1: tl.constexpr, WS: tl.constexpr):
        """Program (head block, split, token): online softmax over the split's rows (log2 domain).
        Without PARTIAL (one split) it writes the normalised output; otherwise the fp32 partial and its log2-sum-exp.
        NVB > 1: the value dims in NVB slices of DV, one program each (Q.K^T computed by each)."""
        hb = tl.program_id(0) // NVB
        vb = tl.program_id(0) % NVB
        split = tl.program_id(1)
        bt = tl.program_id(2).to(tl.int64)
        b = bt // T
        t = bt % T
        heads = hb * GP + tl.arange(0, GP)
        offs_d1 = tl.arange(0, D1)
        q_base = Q + b * sqb + t * sqt + heads[:, None] * sqh
        q1 = tl.load(q_base + offs_d1[None, :])
        if D2 > 0:
            offs_d2 = D1 + tl.arange(0, D2)
            q2 = tl.load(q_base + offs_d2[None, :])
        offs_v = vb * DV + tl.arange(0, DV)
        m_i = tl.full((GP,), float("-inf"), tl.float32)
        l_i = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, DV), tl.float32)
        start = split * SPLIT_LEN
        end = tl.minimum(start + SPLIT_LEN, N_KEYS)
        kv_b = KV + b * skb
        # kernel-argument bounds (a computed bound breaks the interpreter); WS: Triton's automatic warp
        # specialisation (loads and dots in separate warps), a tuning option
        for i in tl.range(0, SPLIT_LEN, BN, warp_specialize=WS):
            offs_n = start + i + tl.arange(0, BN)
            in_range = offs_n < end
            if SPARSE:
                idx = tl.load(IDX + b * sib + t * sit + offs_n, mask=in_range, other=-1)
                valid = idx >= 0
                rows = tl.where(valid, idx, 0).to(tl.int64)
            else:
                valid = in_range
                rows = offs_n.to(tl.int64)
            k_rows = kv_b + rows[:, None] * sks
            k1 = tl.load(k_rows + offs_d1[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q1, tl.trans(k1))
            if D2 > 0:
                k2 = tl.load(k_rows + offs_d2[None, :], mask=valid[:, None], other=0.0)
                s += tl.dot(q2, tl.trans(k2))
            s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if V_IS_K1:
                v = k1
            else:
                v = tl.load(k_rows + offs_v[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        if not PARTIAL:
            o_ptrs = O + b * sob + t * sot + heads[:, None] * soh + offs_v[None, :]
            tl.store(o_ptrs, out.to(O.dtype.element_ty))
        else:
            row = (bt * NSPLIT + split) * H + heads  # partials laid out (B*T, NSPLIT, H, NVB * DV)
            tl.store(OP + row[:, None] * (NVB * DV) + offs_v[None, :], out)
            lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
            tl.store(LSE + row, lse)

    @triton.jit
    def _merge_splits_kernel(OP, LSE, O, T, NSPLIT, sob, sot, soh,
                             H: tl.constexpr, HB: tl.constexpr, DV: tl.constexpr):
        """out = sum_s 2^(lse_s - max) * o_s / sum_s 2^(lse_s - max) for HB heads of one token."""
        bt = tl.program_id(0).to(tl.int64)
        heads = tl.program_id(1) * HB + tl.arange(0, HB)
        offs_v = tl.arange(0, DV)
        m = tl.full((HB,), float("-inf"), tl.float32)
        for s in range(NSPLIT):
            m = tl.maximum(m, tl.load(LSE + (bt * NSPLIT + s) * H + heads))
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        den = tl.zeros((HB,), tl.float32)
        acc = tl.zeros((HB, DV), tl.float32)
        for s in range(NSPLIT):
            row = (bt * NSPLIT + s) * H + heads
            w = tl.exp2(tl.load(LSE + row) - m_safe)
            den += w
            acc += w[:, None] * tl.load(OP + row[:, None] * DV + offs_v[None, :])
        out = acc / tl.where(den == 0.0, 1.0, den)[:, None]
        b = bt // T
        t = bt % T
        tl.store(O + b * sob + t * sot + heads[:, None] * soh + offs_v[None, :], out.to(O.dtype.element_ty))


def mqa_attention(q: torch.Tensor, kv: torch.Tensor, dv: int, scaling: float, indices: torch.Tensor | None = None,
                  *, splits: int = 1, block_heads: int = 64, block_v: int | None = None, block_n: int = 64,
                  num_warps: int = 8,
                  num_stages: int = 2, warp_specialize: bool = False,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q (B, T, H, d) over one latent KV head kv (B, S, d) (unit last stride), value = kv[..., :dv].

    indices None: every row of kv (dense decode); else (B, T, k) int32 rows, -1 for none (DSA). ``splits``
    cuts the keys (or the k selected rows) into that many ranges, merged at the end (flash-decoding).
    block_v: value dims per program (default all dv; smaller cuts the accumulator, Q.K^T is then
    recomputed per slice). Returns (B, T, H, dv) in q's dtype, written into ``out`` when given.
    """
    B, T, H, d = q.shape
    S = kv.shape[1]
    assert kv.shape[-1] == d and kv.stride(-1) == 1 and q.stride(-1) == 1, "q and kv rows must be contiguous"
    D1, D2 = _split_dim(d)
    GP = min(block_heads, _pow2(H))
    assert H % GP == 0 and dv & (dv - 1) == 0 and dv <= D1, "heads a multiple of the head block, dv a power of 2"
    n_keys = S if indices is None else indices.shape[-1]
    split_len = triton.cdiv(triton.cdiv(n_keys, splits), block_n) * block_n
    splits = triton.cdiv(n_keys, split_len)
    if out is None:
        out = torch.empty(B, T, H, dv, dtype=q.dtype, device=q.device)
    idx = indices if indices is not None else q  # unused pointer when dense
    if indices is not None:
        assert indices.dtype == torch.int32 and indices.stride(-1) == 1
    if splits > 1:
        partial = torch.empty(B * T * splits * H * dv, dtype=torch.float32, device=q.device)
        lse = torch.empty(B * T * splits * H, dtype=torch.float32, device=q.device)
    else:
        partial = lse = out
    DVB = block_v or dv
    assert dv % DVB == 0
    grid = (H // GP * (dv // DVB), splits, B * T)
    _mqa_split_kernel[grid](
        q, kv, idx, out, partial, lse, T, n_keys, split_len, float(scaling) * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), kv.stride(0), kv.stride(1),
        idx.stride(0), idx.stride(1), out.stride(0), out.stride(1), out.stride(2),
        splits, GP=GP, D1=D1, D2=D2, DV=DVB, NVB=dv // DVB, BN=block_n, H=H, PARTIAL=splits > 1, SPARSE=indices is not None,
        V_IS_K1=DVB == D1, WS=warp_specialize, num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        HB = min(16, GP)
        _merge_splits_kernel[(B * T, H // HB)](partial, lse, out, T, splits, out.stride(0), out.stride(1),
                                              out.stride(2), H=H, HB=HB, DV=dv, num_warps=4)
    return out

