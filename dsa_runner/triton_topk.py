"""Exact top-k selection over the last dimension of a score matrix, in Triton (radix select).

torch.topk on 64 x 131072 bf16 scores takes ~30x its bytes floor on an H200. This kernel reads each row
twice and never syncs with the host, so it can be captured in a CUDA graph. One program per row:

1. Group maxima: M[j] = max of the row's keys at positions j, j + W, j + 2W, ... (W >= 4k groups;
   strided so that clusters of high scores, e.g. recent tokens, spread over many groups).
2. tau = k-th largest of M, truncated to 16 bits (a radix select in registers). At least k groups have a
   maximum >= tau, so at least k scores are >= tau: the top k all lie in {score >= tau}, and for
   independent scores that set holds ~1.15 k elements (at most k*S/W more than k when scores cluster).
3. Compaction: the scores >= tau (the candidates) go, in index order, to a per-row buffer of CAP entries.
4. Exact radix select over the candidates in registers (4-bit digits: 4 levels for bf16, 8 for fp32),
   then the output: every candidate above the threshold key, and of those equal to it the most recent
   ones (highest indices), so ties are broken the same way for any row length.

If the candidates overflow CAP (mass ties at tau, e.g. many -inf or 0 scores), steps 4-5 stream over the
row instead (one read per digit level): slower, equally exact.

Scores are compared through an order-preserving unsigned key of their bits, -0.0 taken as +0.0. A
selected score of -inf (a masked key) comes out as index -1, as in kernels.select_top_k.
"""

from __future__ import annotations

import torch

from dsa_runner import triton_kernels

triton, tl = triton_kernels.triton, triton_kernels.tl


def available(device: torch.device | str) -> bool:
    return triton_kernels.available(device)


def _neg_inf_key(dtype: torch.dtype) -> int:
    """The kernel's key of -inf, so that selected masked keys can be written as -1."""
    if dtype == torch.bfloat16:
        b = torch.tensor(float("-inf"), dtype=torch.bfloat16).view(torch.int16).item()
        s = b ^ ((b >> 31) & 0x7FFF)
        return ((s + 32768) << 16) & 0xFFFFFFFF
    b = torch.tensor(float("-inf"), dtype=torch.float32).view(torch.int32).item()
    s = b ^ ((b >> 31) & 0x7FFFFFFF)
    return (s ^ -(1 << 31)) & 0xFFFFFFFF


if triton_kernels.HAVE_TRITON:

    @triton.jit
    def _ordered_key(x, IS_BF16: tl.constexpr):
        """uint32 in the order of the float values; bf16 keys sit in the top 16 bits so that the
        digit levels run the same way for both dtypes."""
        if IS_BF16:
            b = x.to(tl.int16, bitcast=True).to(tl.int32)
            b = tl.where(b == -32768, 0, b)  # -0.0 equals +0.0 for torch.topk too
            s = b ^ ((b >> 31) & 0x7FFF)
            key = ((s + 32768) << 16).to(tl.uint32, bitcast=True)
        else:
            b = x.to(tl.int32, bitcast=True)
            b = tl.where(b == -2147483648, 0, b)
            s = b ^ ((b >> 31) & 0x7FFFFFFF)
            key = (s ^ -2147483648).to(tl.uint32, bitcast=True)
        return key

    @triton.jit
    def _boundary_digit(h, need):
        """In a 16-bin digit histogram: the digit d at which the count from the top reaches need,
        the count above d and the count at d."""
        bins = tl.arange(0, 16)
        at_or_above = tl.sum(h, 0) - tl.cumsum(h, 0) + h
        d = tl.max(tl.where(at_or_above >= need, bins, -1), 0)
        above = tl.sum(tl.where(bins > d, h, 0), 0)
        at = tl.sum(tl.where(bins == d, h, 0), 0)
        return d, above, at

    @triton.jit
    def _radix_select(keys, valid, need, LEVELS: tl.constexpr):
        """The need-th largest key among keys[valid], its top 4 * LEVELS bits exactly (lower bits 0);
        also how many more must be taken among the keys equal to it, and how many there are."""
        prefix = tl.full([], 0, tl.uint32)
        at = need
        for lvl in tl.static_range(LEVELS):
            shift = 28 - 4 * lvl
            digit = ((keys >> shift) & 15).to(tl.int32)
            if lvl == 0:
                m = valid
            else:
                m = valid & ((keys >> (shift + 4)) == (prefix >> (shift + 4)))
            d, above, at = _boundary_digit(tl.histogram(digit, 16, mask=m), need)
            need -= above
            prefix = prefix | (d.to(tl.uint32) << shift)
        return prefix, need, at

    @triton.jit
    def _emit(OUT, keys, idx, valid, thr, need, n_eq, base, eq_seen, NEG_KEY: tl.constexpr):
        """Writes the selected candidates of one tile (in index order) after base; ties at thr: the
        last need of the n_eq (eq_seen of them were in earlier tiles). Returns the counters."""
        gt = valid & (keys > thr)
        eq = (valid & (keys == thr)).to(tl.int32)
        eq_rank = eq_seen + tl.cumsum(eq, 0) - eq
        take = (gt | ((eq != 0) & (eq_rank >= n_eq - need))).to(tl.int32)
        pos = base + tl.cumsum(take, 0) - take
        tl.store(OUT + pos, tl.where(keys == NEG_KEY, -1, idx).to(OUT.dtype.element_ty), mask=take != 0)
        return base + tl.sum(take, 0), eq_seen + tl.sum(eq, 0)

    @triton.jit
    def _group_maxima(x_row, S, IS_BF16: tl.constexpr, W: tl.constexpr, UNROLL: tl.constexpr,
                      STAGES: tl.constexpr):
        """Max key of each strided group j, j + W, j + 2W, ... (keys are >= 0: 0 means no element)."""
        offs_w = tl.arange(0, W)
        grp = tl.zeros([W], tl.uint32)
        for start in tl.range(0, S, W * UNROLL, num_stages=STAGES):
            o = start + tl.arange(0, UNROLL)[:, None] * W + offs_w[None, :]
            kk = _ordered_key(tl.load(x_row + o, mask=o < S, other=0.0), IS_BF16)
            grp = tl.maximum(grp, tl.max(tl.where(o < S, kk, 0), 0))
        return grp

    @triton.jit
    def _compact(x_row, S, tau, bufk, bufi, IS_BF16: tl.constexpr, CAP: tl.constexpr, TILE: tl.constexpr,
                 STAGES: tl.constexpr):
        """Writes the keys >= tau and their positions, in index order, to the first CAP buffer slots;
        returns how many there are (also beyond CAP)."""
        n_c = 0
        offs_t = tl.arange(0, TILE)
        for start in tl.range(0, S, TILE, num_stages=STAGES):
            o = start + offs_t
            kk = _ordered_key(tl.load(x_row + o, mask=o < S, other=0.0), IS_BF16)
            c = ((o < S) & (kk >= tau)).to(tl.int32)
            pos = n_c + tl.cumsum(c, 0) - c
            ok = (c != 0) & (pos < CAP)
            tl.store(bufk + pos, kk.to(tl.int32, bitcast=True), mask=ok)
            tl.store(bufi + pos, o, mask=ok)
            n_c += tl.sum(c, 0)
        return n_c

    @triton.jit
    def _select_streaming(x_row, out_row, S, k, tau, IS_BF16: tl.constexpr, NEG_KEY: tl.constexpr,
                          LEVELS: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr):
        """The candidates' selection for rows whose candidates overflow the buffer: one read of the row
        per digit level, one more for the output."""
        offs_t = tl.arange(0, TILE)
        prefix = tl.full([], 0, tl.uint32)
        need = k
        n_eq = k
        for lvl in tl.static_range(LEVELS):
            shift = 28 - 4 * lvl
            h = tl.zeros([16], tl.int32)
            for start in tl.range(0, S, TILE, num_stages=STAGES):
                o = start + offs_t
                kk = _ordered_key(tl.load(x_row + o, mask=o < S, other=0.0), IS_BF16)
                m = (o < S) & (kk >= tau)
                if lvl > 0:
                    m = m & ((kk >> (shift + 4)) == (prefix >> (shift + 4)))
                h += tl.histogram(((kk >> shift) & 15).to(tl.int32), 16, mask=m)
            d, above, n_eq = _boundary_digit(h, need)
            need -= above
            prefix = prefix | (d.to(tl.uint32) << shift)
        base = 0
        eq_seen = 0
        for start in range(0, S, TILE):
            o = start + offs_t
            kk = _ordered_key(tl.load(x_row + o, mask=o < S, other=0.0), IS_BF16)
            base, eq_seen = _emit(out_row, kk, o, o < S, prefix, need, n_eq, base, eq_seen, NEG_KEY)

    @triton.jit
    def _top_k_kernel(X, OUT, BUFK, BUFI, S, k, stride_x, stride_o,
                      IS_BF16: tl.constexpr, NEG_KEY: tl.constexpr, W: tl.constexpr, UNROLL: tl.constexpr,
                      CAP: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr, STOP: tl.constexpr):
        """One row per program; STOP < 4 ends after that many steps (1 group maxima, 2 tau,
        3 compaction) and writes a scalar instead, to time the steps by differences."""
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride_x
        out_row = OUT + row * stride_o
        bufk = BUFK + row * CAP
        bufi = BUFI + row * CAP
        LEVELS: tl.constexpr = 4 if IS_BF16 else 8
        grp = _group_maxima(x_row, S, IS_BF16, W, UNROLL, STAGES)
        tau, _, _ = _radix_select(grp, tl.arange(0, W) < S, k, 4)
        if STOP == 1:
            tl.store(out_row, tl.max(grp, 0).to(tl.int64))
        elif STOP == 2:
            tl.store(out_row, tau.to(tl.int64))
        else:
            n_c = _compact(x_row, S, tau, bufk, bufi, IS_BF16, CAP, TILE, STAGES)
            if STOP == 3:
                tl.store(out_row, n_c.to(tl.int64))
            elif n_c <= CAP:
                offs_c = tl.arange(0, CAP)
                valid = offs_c < n_c
                keys = tl.load(bufk + offs_c, mask=valid, other=0).to(tl.uint32, bitcast=True)
                idx = tl.load(bufi + offs_c, mask=valid, other=0)
                thr, need, n_eq = _radix_select(keys, valid, k, LEVELS)
                _emit(out_row, keys, idx, valid, thr, need, n_eq, 0, 0, NEG_KEY)
            else:
                _select_streaming(x_row, out_row, S, k, tau, IS_BF16, NEG_KEY, LEVELS, TILE, STAGES)


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def top_k(scores: torch.Tensor, k: int, *, unroll: int = 2, tile: int | None = None, stages: int = 2,
          num_warps: int = 8, stop: int = 4) -> torch.Tensor:
    """Indices (..., k) of the k largest entries of each row of ``scores`` (last dim), int64, in no
    particular order; -1 for a selected -inf; ties at the boundary go to the highest indices.
    bf16 or float32 (other float dtypes are taken as float32); k <= scores.shape[-1]. The keyword
    arguments are tiling choices, and ``stop`` the benchmark's cut-off (see _top_k_kernel)."""
    S = scores.shape[-1]
    lead = scores.shape[:-1]
    if not 0 < k <= S:
        if k == 0:
            return torch.empty(*lead, 0, dtype=torch.int64, device=scores.device)
        raise ValueError(f"k = {k} outside 1..{S}")
    if scores.dtype not in (torch.bfloat16, torch.float32):
        scores = scores.float()
    x = scores.reshape(-1, S)
    if x.stride(-1) != 1:
        x = x.contiguous()
    R = x.shape[0]
    out = torch.empty(R, k, dtype=torch.int64, device=scores.device)
    if R == 0:
        return out.view(*lead, k)
    W = max(_pow2(4 * k), 256)
    cap = max(_pow2(2 * k), 256)
    tile = tile or min(W, 8192)
    bufk = torch.empty(R, cap, dtype=torch.int32, device=scores.device)
    bufi = torch.empty(R, cap, dtype=torch.int32, device=scores.device)
    is_bf16 = x.dtype == torch.bfloat16
    _top_k_kernel[(R,)](x, out, bufk, bufi, S, k, x.stride(0), out.stride(0),
                        IS_BF16=is_bf16, NEG_KEY=_neg_inf_key(x.dtype), W=W, UNROLL=unroll, CAP=cap, TILE=tile,
                        STAGES=stages, STOP=stop, num_warps=num_warps)
    return out.view(*lead, k)
