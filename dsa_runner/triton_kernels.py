"""Triton kernels for DSA on GPU: fused lightning-indexer scores and sparse attention.

Optional: this module imports without Triton or CUDA; ``available(device)`` says whether the kernels can
run. Both kernels are checked against ``dsa_runner.kernels`` reference functions (tests and
bench/dsa_attention.py). Set TRITON_INTERPRET=1 to run them on CPU tensors (slow, for debugging).
"""

from __future__ import annotations

import os

import torch

try:  # pragma: no cover - depends on the machine
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - any import problem means: no Triton
    triton = None
    tl = None
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device | str) -> bool:
    device = torch.device(device)
    if not HAVE_TRITON or os.environ.get("DSA_DISABLE_TRITON") == "1":
        return False
    return device.type == "cuda" or INTERPRET


def _pow2(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p


if HAVE_TRITON:

    @triton.jit
    def _index_scores_kernel(Q, W, K, KS, KV0, OUT, T, S,
                             stride_qb, stride_qr, stride_wb, stride_kb, stride_ks, stride_ksb,
                             stride_ob, stride_ot,
                             H: tl.constexpr, D: tl.constexpr, TB: tl.constexpr, BN: tl.constexpr,
                             ITERS: tl.constexpr, HAS_KS: tl.constexpr, HAS_KV0: tl.constexpr):
        """I[b, t, s] = sum_j w[b, t, j] * relu(q[b, t, j] . k[b, s]) (* k_scale[b, s]).

        One program: TB query tokens (TB * H rows of q, so the dot has M = TB * H) against ITERS
        tiles of BN keys. Keys after a query's position, or before kv_start[b], get -inf.
        """
        pid_t = tl.program_id(0)
        pid_n = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        BM: tl.constexpr = TB * H
        t0 = pid_t * TB
        offs_t = t0 + tl.arange(0, TB)
        offs_r = t0 * H + tl.arange(0, BM)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * stride_qb + offs_r[:, None] * stride_qr + offs_d[None, :],
                    mask=offs_r[:, None] < T * H, other=0.0)
        w = tl.load(W + b * stride_wb + offs_r, mask=offs_r < T * H, other=0.0)
        q_pos = S - T + offs_t
        last_pos = S - T + tl.minimum(t0 + TB - 1, T - 1)
        if HAS_KV0:
            kv0 = tl.load(KV0 + b)
        for it in range(ITERS):
            n0 = (pid_n * ITERS + it) * BN
            offs_n = n0 + tl.arange(0, BN)
            out_ptrs = OUT + b * stride_ob + offs_t[:, None] * stride_ot + offs_n[None, :]
            out_mask = (offs_t[:, None] < T) & (offs_n[None, :] < S)
            if n0 <= last_pos:
                k = tl.load(K + b * stride_kb + offs_n[:, None] * stride_ks + offs_d[None, :],
                            mask=offs_n[:, None] < S, other=0.0)
                s = tl.dot(q, tl.trans(k))
                s = tl.maximum(s, 0.0) * w[:, None]
                I = tl.sum(tl.reshape(s, (TB, H, BN)), axis=1)
                if HAS_KS:
                    ks = tl.load(KS + b * stride_ksb + offs_n, mask=offs_n < S, other=0.0)
                    I = I * ks[None, :]
                ok = offs_n[None, :] <= q_pos[:, None]
                if HAS_KV0:
                    ok = ok & (offs_n[None, :] >= kv0)
                I = tl.where(ok, I, float("-inf"))
                tl.store(out_ptrs, I.to(OUT.dtype.element_ty), mask=out_mask)
            else:
                tl.store(out_ptrs, tl.full((TB, BN), float("-inf"), OUT.dtype.element_ty), mask=out_mask)

    @triton.jit
    def _quantize_queries_kernel(Q, W, QF, WE, R, D: tl.constexpr, BR: tl.constexpr):
        """Per-row e4m3 quantisation of index queries, scale folded into the head weight:
        q_fp8 = q / s, w_eff = w * s, s = amax(|q|) / 448 (one launch instead of several)."""
        rows = tl.program_id(0) * BR + tl.arange(0, BR)
        ok = rows < R
        offs = rows[:, None].to(tl.int64) * D + tl.arange(0, D)[None, :]
        q = tl.load(Q + offs, mask=ok[:, None], other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(q), axis=1), 1e-12) / 448.0
        qf = tl.minimum(tl.maximum(q / scale[:, None], -448.0), 448.0)
        tl.store(QF + offs, qf.to(QF.dtype.element_ty), mask=ok[:, None])
        w = tl.load(W + rows, mask=ok, other=0.0)
        tl.store(WE + rows, w * scale, mask=ok)

    @triton.jit
    def _index_scores_prefill_kernel(Q, W, K, KS, KV0, OUT, T, S,
                                     stride_qb, stride_qt, stride_qh, stride_wb, stride_wt,
                                     stride_kb, stride_ks, stride_ksb, stride_ob, stride_ot,
                                     H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
                                     ITERS: tl.constexpr, HAS_KS: tl.constexpr, HAS_KV0: tl.constexpr):
        """Same scores as _index_scores_kernel for many query tokens: one program takes BT tokens
        (the dot's M) and ITERS key tiles, and accumulates the heads one by one,
        I += w[:, j] * relu(q[:, j] @ k^T), so no cross-head reshuffle is needed."""
        pid_t = tl.program_id(0)
        pid_n = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        t0 = pid_t * BT
        offs_t = t0 + tl.arange(0, BT)
        t_ok = offs_t < T
        offs_d = tl.arange(0, D)
        q_pos = S - T + offs_t
        last_pos = S - T + tl.minimum(t0 + BT - 1, T - 1)
        if HAS_KV0:
            kv0 = tl.load(KV0 + b)
        q_rows = Q + b * stride_qb + offs_t[:, None].to(tl.int64) * stride_qt + offs_d[None, :]
        w_rows = W + b * stride_wb + offs_t.to(tl.int64) * stride_wt
        for it in range(ITERS):
            n0 = (pid_n * ITERS + it) * BN
            offs_n = n0 + tl.arange(0, BN)
            out_ptrs = OUT + b * stride_ob + offs_t[:, None].to(tl.int64) * stride_ot + offs_n[None, :]
            out_mask = t_ok[:, None] & (offs_n[None, :] < S)
            if n0 <= last_pos:
                k = tl.load(K + b * stride_kb + offs_n[:, None] * stride_ks + offs_d[None, :],
                            mask=offs_n[:, None] < S, other=0.0)
                kt = tl.trans(k)
                I = tl.zeros((BT, BN), tl.float32)
                for j in range(H):
                    q = tl.load(q_rows + j * stride_qh, mask=t_ok[:, None], other=0.0)
                    w = tl.load(w_rows + j, mask=t_ok, other=0.0)
                    I += tl.maximum(tl.dot(q, kt), 0.0) * w[:, None]
                if HAS_KS:
                    ks = tl.load(KS + b * stride_ksb + offs_n, mask=offs_n < S, other=0.0)
                    I = I * ks[None, :]
                ok = offs_n[None, :] <= q_pos[:, None]
                if HAS_KV0:
                    ok = ok & (offs_n[None, :] >= kv0)
                I = tl.where(ok, I, float("-inf"))
                tl.store(out_ptrs, I.to(OUT.dtype.element_ty), mask=out_mask)
            else:
                tl.store(out_ptrs, tl.full((BT, BN), float("-inf"), OUT.dtype.element_ty), mask=out_mask)

    @triton.jit
    def _index_scores_decode_kernel(Q, W, K, KS, OUT, S, sqb, swb, skb, sks, sksb, sob,
                                    H: tl.constexpr, D: tl.constexpr, BN: tl.constexpr, ITERS: tl.constexpr,
                                    HAS_KS: tl.constexpr, STAGES: tl.constexpr, TRANS: tl.constexpr):
        """Decode (one query token that sees every key): I[b, s] = sum_j w[b, j] relu(q[b, j] . k[b, s]).

        No causal test and no branch in the key loop, so the loads of the next key tiles are pipelined
        (STAGES deep); one program streams ITERS tiles of BN keys of one sequence, all H heads as the
        dot's M; TRANS: keys as the dot's M instead (the head sum then stays within a thread group)."""
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs_h = tl.arange(0, H)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + offs_h[:, None] * D + offs_d[None, :])
        w = tl.load(W + b * swb + offs_h)
        for it in tl.range(0, ITERS, num_stages=STAGES):
            offs_n = (pid_n * ITERS + it) * BN + tl.arange(0, BN)
            ok = offs_n < S
            k = tl.load(K + b * skb + offs_n[:, None].to(tl.int64) * sks + offs_d[None, :], mask=ok[:, None],
                        other=0.0)
            if TRANS:
                s = tl.dot(k, tl.trans(q))
                I = tl.sum(tl.maximum(s, 0.0) * w[None, :], axis=1)
            else:
                s = tl.dot(q, tl.trans(k))
                I = tl.sum(tl.maximum(s, 0.0) * w[:, None], axis=0)
            if HAS_KS:
                I = I * tl.load(KS + b * sksb + offs_n, mask=ok, other=0.0)
            tl.store(OUT + b * sob + offs_n, I.to(OUT.dtype.element_ty), mask=ok)

    @triton.jit
    def _sparse_attention_kernel(Q, K, V, IDX, OUT, T, KK, scale,
                                 sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sib, sit, sob, sot, soh,
                                 G: tl.constexpr, GP: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
                                 DV: tl.constexpr, BN: tl.constexpr, USE_DOT: tl.constexpr):
        """One program: one query token, GP heads of one KV head, a DV-slice of the output.

        Loops over the token's selected keys BN at a time, gathering each selected K/V row once for
        all the heads it serves, with an online softmax. USE_DOT: tensor-core dot (GP >= 16, MQA/GQA
        with many heads per KV head); otherwise a broadcast multiply-reduce (MHA, few heads per KV).
        """
        pid = tl.program_id(0).to(tl.int64)
        h_kv = tl.program_id(1).to(tl.int64)
        pid_hv = tl.program_id(2)
        b = pid // T
        t = pid % T
        n_hblocks: tl.constexpr = (G + GP - 1) // GP
        hb = pid_hv % n_hblocks
        vb = pid_hv // n_hblocks
        offs_g = hb * GP + tl.arange(0, GP)
        g_ok = offs_g < G
        heads = h_kv * G + offs_g
        offs_d1 = tl.arange(0, D1)
        q_base = Q + b * sqb + heads[:, None] * sqh + t * sqt
        q1 = tl.load(q_base + offs_d1[None, :], mask=g_ok[:, None], other=0.0)
        if D2 > 0:
            offs_d2 = D1 + tl.arange(0, D2)
            q2 = tl.load(q_base + offs_d2[None, :], mask=g_ok[:, None], other=0.0)
        offs_v = vb * DV + tl.arange(0, DV)
        m_i = tl.full((GP,), float("-inf"), tl.float32)
        l_i = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, DV), tl.float32)
        for n0 in range(0, KK, BN):
            offs_n = n0 + tl.arange(0, BN)
            idx = tl.load(IDX + b * sib + t * sit + offs_n, mask=offs_n < KK, other=-1)
            valid = idx >= 0
            rows = tl.where(valid, idx, 0).to(tl.int64)
            k_base = K + b * skb + h_kv * skh + rows[:, None] * sks
            k1 = tl.load(k_base + offs_d1[None, :], mask=valid[:, None], other=0.0)
            if USE_DOT:
                s = tl.dot(q1, tl.trans(k1))
            else:
                s = tl.sum(q1[:, None, :].to(tl.float32) * k1[None, :, :].to(tl.float32), axis=2)
            if D2 > 0:
                k2 = tl.load(k_base + offs_d2[None, :], mask=valid[:, None], other=0.0)
                if USE_DOT:
                    s += tl.dot(q2, tl.trans(k2))
                else:
                    s += tl.sum(q2[:, None, :].to(tl.float32) * k2[None, :, :].to(tl.float32), axis=2)
            s = tl.where(valid[None, :], s * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(V + b * svb + h_kv * svh + rows[:, None] * svs + offs_v[None, :],
                        mask=valid[:, None], other=0.0)
            if USE_DOT:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            else:
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), axis=1)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = OUT + b * sob + t * sot + heads[:, None] * soh + offs_v[None, :]
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=g_ok[:, None])


def index_scores(q_I: torch.Tensor, w: torch.Tensor, k_I: torch.Tensor, k_scale: torch.Tensor | None,
                 kv_start: torch.Tensor | None, out_dtype: torch.dtype = torch.float32,
                 variant: str = "auto", prefill_tile: tuple[int, int, int] = (64, 128, 4)) -> torch.Tensor:
    """Fused indexer scores; shapes as in dsa_runner.kernels. q_I/k_I bf16, fp16, fp32 or FP8 e4m3
    (then w carries the q scales and k_scale (B, S) the k scales). Causal, aligned to the end.
    prefill_tile: (query tokens, keys, warps) of one program of the heads_loop variant (tuning)."""
    B, T, H, D = q_I.shape
    S = k_I.shape[1]
    assert H & (H - 1) == 0 and D & (D - 1) == 0, "index heads and index head dim must be powers of 2"
    q = q_I.reshape(B, T * H, D)
    if q.stride(-1) != 1:
        q = q.contiguous()
    w = w.reshape(B, T * H).float().contiguous()
    k = k_I if k_I.stride(-1) == 1 else k_I.contiguous()
    out = torch.empty(B, T, S, dtype=out_dtype, device=q_I.device)
    ks = k_scale.float().contiguous() if k_scale is not None else w
    kv0 = kv_start.to(torch.int32).contiguous() if kv_start is not None else w
    if variant == "auto":
        variant = "heads_loop" if T >= 64 else "rows"
    if variant == "heads_loop":
        (BT, BN, warps), ITERS = prefill_tile, 4
        q4 = q_I if q_I.stride(-1) == 1 else q_I.contiguous()
        w3 = w.view(B, T, H)
        grid = (triton.cdiv(T, BT), triton.cdiv(S, BN * ITERS), B)
        _index_scores_prefill_kernel[grid](
            q4, w3, k, ks, kv0, out, T, S,
            q4.stride(0), q4.stride(1), q4.stride(2), w3.stride(0), w3.stride(1),
            k.stride(0), k.stride(1), ks.stride(0), out.stride(0), out.stride(1),
            H=H, D=D, BT=BT, BN=BN, ITERS=ITERS, HAS_KS=k_scale is not None,
            HAS_KV0=kv_start is not None, num_warps=warps, num_stages=2)
        return out
    TB = max(1, min(128 // H if H <= 128 else 1, _pow2(T)))
    if TB * H < 16:
        TB = 16 // H
    BN = 64 if H * TB >= 128 else 128
    ITERS = 4
    grid = (triton.cdiv(T, TB), triton.cdiv(S, BN * ITERS), B)
    _index_scores_kernel[grid](
        q, w, k, ks, kv0, out, T, S,
        q.stride(0), q.stride(1), w.stride(0), k.stride(0), k.stride(1), ks.stride(0),
        out.stride(0), out.stride(1),
        H=H, D=D, TB=TB, BN=BN, ITERS=ITERS, HAS_KS=k_scale is not None, HAS_KV0=kv_start is not None,
        num_warps=8 if TB * H >= 128 else 4, num_stages=2)
    return out


def index_scores_decode(q_I: torch.Tensor, w: torch.Tensor, k_I: torch.Tensor, k_scale: torch.Tensor | None, *,
                        out_dtype: torch.dtype = torch.float32, block_n: int = 128, iters: int = 8,
                        num_warps: int = 4, num_stages: int = 3, transposed: bool = False) -> torch.Tensor:
    """Index scores of one new token per sequence over all its S keys: q_I (B, 1, H, D), w (B, 1, H),
    k_I (B, S, D), k_scale (B, S) or None -> (B, 1, S). Same values as index_scores for T = 1 with every
    key visible (no kv_start: sequences of equal length, as in a decode benchmark)."""
    B, T, H, D = q_I.shape
    assert T == 1 and H & (H - 1) == 0 and D & (D - 1) == 0
    S = k_I.shape[1]
    q = q_I.reshape(B, H * D).contiguous()
    w = w.reshape(B, H).float().contiguous()
    k = k_I if k_I.stride(-1) == 1 else k_I.contiguous()
    ks = k_scale.float().contiguous() if k_scale is not None else w
    out = torch.empty(B, 1, S, dtype=out_dtype, device=q_I.device)
    grid = (triton.cdiv(S, block_n * iters), B)
    _index_scores_decode_kernel[grid](q, w, k, ks, out, S, q.stride(0), w.stride(0), k.stride(0), k.stride(1),
                                      ks.stride(0), out.stride(0), H=H, D=D, BN=block_n, ITERS=iters,
                                      HAS_KS=k_scale is not None, STAGES=num_stages, TRANS=transposed,
                                      num_warps=num_warps)
    return out


def quantize_queries_fp8(q_I: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, H, D) index queries -> FP8 e4m3 queries and w * per-(token, head) scale (float32)."""
    q = q_I.contiguous()
    w = w.float().contiguous()
    D = q.shape[-1]
    R = q.numel() // D
    q_fp8 = torch.empty(q.shape, dtype=torch.float8_e4m3fn, device=q.device)
    w_eff = torch.empty_like(w)
    BR = 32
    _quantize_queries_kernel[(triton.cdiv(R, BR),)](q, w, q_fp8, w_eff, R, D=D, BR=BR, num_warps=4)
    return q_fp8, w_eff


def _split_dim(d: int) -> tuple[int, int]:
    """d as D1 + D2 with both powers of two (D2 may be 0): 128 -> (128, 0), 576 -> (512, 64)."""
    d1 = 1 << (d.bit_length() - 1)
    d2 = d - d1
    if d2 and d2 & (d2 - 1):
        raise ValueError(f"head dim {d} is not a sum of two powers of two")
    return d1, d2


def sparse_attention(query, key, value, top_k: torch.Tensor, scaling: float, *, out: torch.Tensor | None = None,
                     block_heads: int | None = None, block_v: int | None = None, block_n: int | None = None,
                     num_warps: int | None = None) -> torch.Tensor:
    """query (B, H, T, d), key (B, H_kv, S, d), value (B, H_kv, S, d_v), top_k (B, T, k) with -1 for
    no key. Returns (B, T, H, d_v), written into ``out`` when given. Any strides with a unit last one
    (e.g. value a slice of key, as in MLA's MQA mode). block_heads / block_v: tile sizes (tuning)."""
    B, H, T, d = query.shape
    H_kv = key.shape[1]
    G = H // H_kv
    dv_total = value.shape[-1]
    D1, D2 = _split_dim(d)
    use_dot = G >= 16
    if use_dot:
        GP = block_heads or min(_pow2(G), 64 if D2 == 0 and d <= 128 else 32)
        DV = block_v or min(dv_total, 256)
        BN = block_n or 32
        num_warps = num_warps or 8
    else:
        GP = _pow2(G)
        DV = dv_total
        BN = block_n or max(16, min(64, 4096 // (GP * max(d, dv_total) // 16)))
        num_warps = num_warps or 4
    assert dv_total % DV == 0 and DV & (DV - 1) == 0, "value dim must be a power of two (or multiple of 256)"
    idx = top_k if top_k.dtype in (torch.int32, torch.int64) else top_k.to(torch.int32)
    if out is None:
        out = torch.empty(B, T, H, dv_total, dtype=query.dtype, device=query.device)
    n_hblocks = triton.cdiv(G, GP)
    grid = (B * T, H_kv, n_hblocks * (dv_total // DV))
    _sparse_attention_kernel[grid](
        query, key, value, idx, out, T, idx.shape[-1], float(scaling),
        query.stride(0), query.stride(1), query.stride(2),
        key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        idx.stride(0), idx.stride(1), out.stride(0), out.stride(1), out.stride(2),
        G=G, GP=GP, D1=D1, D2=D2, DV=DV, BN=BN, USE_DOT=use_dot, num_warps=num_warps, num_stages=2)
    return out
