"""Exact top-k selection over the last dimension of a score matrix, in Triton (radix select).

torch.topk on 64 x 131072 bf16 scores takes ~30x its bytes floor on an H200. This selection reads each
row twice, never syncs with the host (so it can be captured in a CUDA graph) and has no full-row scan
(Triton's tl.cumsum costs 1-2 cycles an element per SM, more than the reads). Per row:

1. Group maxima: M[j] = max of the row's keys at positions j, j + W, j + 2W, ... (W >= k groups, 4k by
   default, strided so that clusters of high scores, e.g. recent tokens, spread over many groups).
2. tau = k-th largest of M, truncated to 16 bits (radix select in registers). At least k groups have a
   maximum >= tau, so at least k scores are >= tau: the top k all lie in {score >= tau}. With W = 4k that
   set held 1.15-1.2 k elements a row on the DSA benchmark's 128K-key scores.
3. Compaction: the scores >= tau (candidates) go to a per-row buffer of CAP entries, each slot taken with
   a relaxed atomic increment of the row's counter (few: only candidates take one).
4. Exact radix select over the candidates in registers (4-bit digits: 4 levels for bf16, 8 for fp32);
   of the candidates equal to the threshold, a second radix select over their positions keeps the
   most recent ones, so ties are broken the same way for any row length and any slot order. Output
   slots are again taken by atomic increments.

Steps 1 and 3 are split over several programs per row when there are few rows (decode), so that every
SM streams; steps 2 and 4 take one program per row. If the candidates overflow CAP (mass ties at tau,
e.g. many -inf or 0 scores), step 4 streams over the row instead (one read per digit level): slower,
equally exact.

Scores are compared through an order-preserving unsigned key of their bits, -0.0 taken as +0.0. A
selected score of -inf (a masked key) comes out as index -1, as in kernels.select_top_k.
"""

from __future__ import annotations

import functools

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


# Each row's two slot counters (candidates, outputs) in cache lines of their own: with adjacent counters,
# every row's atomics queued on the same few L2 lines (compaction at decode 128K on an H200: 50 us with
# adjacent counters, 28 us with these).
_CNT_STRIDE = 64

if triton_kernels.HAVE_TRITON:
    CNT_STRIDE = tl.constexpr(_CNT_STRIDE)

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
    def _load_keys(x_row, o, S, IS_BF16: tl.constexpr):
        """Keys at positions o, and 0 (below every key) past the row's end."""
        kk = _ordered_key(tl.load(x_row + o, mask=o < S, other=0.0), IS_BF16)
        return tl.where(o < S, kk, 0)

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
        """The need-th largest of keys[valid] (need >= 1), its top 4 * LEVELS bits exactly (lower bits
        0); also how many must be taken among the keys equal to it, and how many there are."""
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
    def _stream_select(x_row, S, bound, need, BY_POSITION: tl.constexpr, IS_BF16: tl.constexpr,
                       LEVELS: tl.constexpr, POS_SHIFT: tl.constexpr, TILE: tl.constexpr):
        """_radix_select over the whole row, one read per level: over the keys >= bound or, with
        BY_POSITION, over the positions (shifted to the top bits) of the keys == bound."""
        offs = tl.arange(0, TILE)
        prefix = tl.full([], 0, tl.uint32)
        at = need
        for lvl in tl.static_range(LEVELS):
            shift = 28 - 4 * lvl
            h = tl.zeros([16], tl.int32)
            for start in range(0, S, TILE):
                o = start + offs
                kk = _load_keys(x_row, o, S, IS_BF16)
                if BY_POSITION:
                    m = (o < S) & (kk == bound)
                    v = o.to(tl.uint32) << POS_SHIFT
                else:
                    m = (o < S) & (kk >= bound)
                    v = kk
                if lvl > 0:
                    m = m & ((v >> (shift + 4)) == (prefix >> (shift + 4)))
                h += tl.histogram(((v >> shift) & 15).to(tl.int32), 16, mask=m)
            d, above, at = _boundary_digit(h, need)
            need -= above
            prefix = prefix | (d.to(tl.uint32) << shift)
        return prefix, need, at

    @triton.jit
    def _emit(out_row, ocnt, keys, pos, take, NEG_KEY: tl.constexpr):
        slot = tl.atomic_add(ocnt + tl.zeros_like(pos), 1, mask=take, sem="relaxed")
        tl.store(out_row + slot, tl.where(keys == NEG_KEY, -1, pos).to(out_row.dtype.element_ty), mask=take)

    @triton.jit
    def _tau(grp, valid, k, TAU, CNT, row):
        """Step 2; also zeroes the row's two slot counters for steps 3 and 4."""
        tau, _, _ = _radix_select(grp, valid, k, 4)
        tl.store(TAU + row, tau.to(tl.int32, bitcast=True))
        tl.store(CNT + CNT_STRIDE * row, 0)
        tl.store(CNT + CNT_STRIDE * row + CNT_STRIDE // 2, 0)

    @triton.jit
    def _group_max_kernel(X, GM, TAU, CNT, S, k, stride_x, IS_BF16: tl.constexpr, W: tl.constexpr,
                          SPLIT: tl.constexpr, UNROLL: tl.constexpr):
        """Step 1 for W / SPLIT of the groups of a row (program (row, part)); with SPLIT == 1, step 2 too."""
        row = tl.program_id(0).to(tl.int64)
        CH: tl.constexpr = W // SPLIT
        offs = tl.program_id(1) * CH + tl.arange(0, CH)
        x_row = X + row * stride_x
        grp = tl.zeros([CH], tl.uint32)
        for start in range(0, S, W * UNROLL):
            for u in tl.static_range(UNROLL):
                grp = tl.maximum(grp, _load_keys(x_row, start + u * W + offs, S, IS_BF16))
        if SPLIT == 1:
            _tau(grp, offs < S, k, TAU, CNT, row)
        else:
            tl.store(GM + row * W + offs, grp.to(tl.int32, bitcast=True))

    @triton.jit
    def _tau_kernel(GM, TAU, CNT, S, k, W: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, W)
        grp = tl.load(GM + row * W + offs).to(tl.uint32, bitcast=True)
        _tau(grp, offs < S, k, TAU, CNT, row)

    @triton.jit
    def _compact_kernel(X, TAU, CNT, BUFK, BUFI, S, stride_x, IS_BF16: tl.constexpr, CAP: tl.constexpr,
                        TILE: tl.constexpr, SPLIT: tl.constexpr, UNROLL: tl.constexpr):
        """Step 3 for the tiles part, part + SPLIT, ... of a row (program (row, part))."""
        row = tl.program_id(0).to(tl.int64)
        part = tl.program_id(1)
        x_row = X + row * stride_x
        tau = tl.load(TAU + row).to(tl.uint32, bitcast=True)
        offs = tl.arange(0, TILE)
        for start in range(part * TILE, S, SPLIT * TILE * UNROLL):
            for u in tl.static_range(UNROLL):
                o = start + u * SPLIT * TILE + offs
                kk = _load_keys(x_row, o, S, IS_BF16)
                c = (o < S) & (kk >= tau)
                slot = tl.atomic_add(CNT + CNT_STRIDE * row + tl.zeros_like(o), 1, mask=c, sem="relaxed")
                ok = c & (slot < CAP)
                tl.store(BUFK + row * CAP + slot, kk.to(tl.int32, bitcast=True), mask=ok)
                tl.store(BUFI + row * CAP + slot, o, mask=ok)

    @triton.jit
    def _select_candidates(BUFK, BUFI, out_row, ocnt, n_c, k, LEVELS: tl.constexpr, NEG_KEY: tl.constexpr,
                           CAP: tl.constexpr, POS_LEVELS: tl.constexpr):
        offs = tl.arange(0, CAP)
        valid = offs < n_c
        keys = tl.load(BUFK + offs, mask=valid, other=0).to(tl.uint32, bitcast=True)
        pos = tl.load(BUFI + offs, mask=valid, other=0)
        thr, need, n_eq = _radix_select(keys, valid, k, LEVELS)
        eq = valid & (keys == thr)
        shifted = pos.to(tl.uint32) << (32 - 4 * POS_LEVELS)
        pos_thr = tl.full([], 0, tl.uint32)  # takes every tie
        if n_eq > need:
            pos_thr, _, _ = _radix_select(shifted, eq, need, POS_LEVELS)
        take = (valid & (keys > thr)) | (eq & (shifted >= pos_thr))
        _emit(out_row, ocnt, keys, pos, take, NEG_KEY)

    @triton.jit
    def _select_streaming(x_row, out_row, ocnt, S, k, tau, IS_BF16: tl.constexpr, LEVELS: tl.constexpr,
                          NEG_KEY: tl.constexpr, TILE: tl.constexpr, POS_LEVELS: tl.constexpr):
        POS_SHIFT: tl.constexpr = 32 - 4 * POS_LEVELS
        thr, need, n_eq = _stream_select(x_row, S, tau, k, False, IS_BF16, LEVELS, 0, TILE)
        pos_thr = tl.full([], 0, tl.uint32)
        if n_eq > need:
            pos_thr, _, _ = _stream_select(x_row, S, thr, need, True, IS_BF16, POS_LEVELS, POS_SHIFT, TILE)
        offs = tl.arange(0, TILE)
        for start in range(0, S, TILE):
            o = start + offs
            kk = _load_keys(x_row, o, S, IS_BF16)
            shifted = o.to(tl.uint32) << POS_SHIFT
            take = (o < S) & ((kk > thr) | ((kk == thr) & (shifted >= pos_thr)))
            _emit(out_row, ocnt, kk, o, take, NEG_KEY)

    @triton.jit
    def _select_kernel(X, TAU, CNT, BUFK, BUFI, OUT, S, k, stride_x, stride_o, IS_BF16: tl.constexpr,
                       NEG_KEY: tl.constexpr, CAP: tl.constexpr, TILE: tl.constexpr, POS_LEVELS: tl.constexpr):
        """Step 4, one program per row: from the candidates in registers, or streamed over the row when
        they overflowed the buffer."""
        row = tl.program_id(0).to(tl.int64)
        ocnt = CNT + CNT_STRIDE * row + CNT_STRIDE // 2
        LEVELS: tl.constexpr = 4 if IS_BF16 else 8
        n_c = tl.load(CNT + CNT_STRIDE * row)
        if n_c <= CAP:
            _select_candidates(BUFK + row * CAP, BUFI + row * CAP, OUT + row * stride_o, ocnt, n_c, k, LEVELS,
                               NEG_KEY, CAP, POS_LEVELS)
        else:
            tau = tl.load(TAU + row).to(tl.uint32, bitcast=True)
            _select_streaming(X + row * stride_x, OUT + row * stride_o, ocnt, S, k, tau, IS_BF16, LEVELS, NEG_KEY,
                              TILE, POS_LEVELS)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def top_k(scores: torch.Tensor, k: int, *, groups: int | None = None, split: int | None = None,
          unroll: int = 4, tile: int = 2048, num_warps: int = 8, stop: int = 4) -> torch.Tensor:
    """Indices (..., k) of the k largest entries of each row of ``scores`` (last dim), int64, in no
    particular order; -1 for a selected -inf; ties at the boundary go to the highest indices.
    bf16 or float32 (other float dtypes are taken as float32); k <= scores.shape[-1].

    groups: W (default 4k); split: programs per row in steps 1 and 3 (default: enough for ~2 programs
    an SM); unroll, tile, num_warps: tiling (defaults: the fastest of bench/dsa_topk.py's sweep on an H200
    at decode 128K, also the fastest at prefill 128K); stop < 4: launch only steps 1-2 (stop 2) or 1-3
    (stop 3), for the benchmark's timing of the steps."""
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
    dev = scores.device
    W = groups or max(_pow2(4 * k), 256)
    assert W >= k and W & (W - 1) == 0, "groups must be a power of 2 >= k"
    cap = max(_pow2(2 * k), 256)
    if split is None:
        split = min(_pow2(-(-2 * _sm_count(dev) // R)), max(1, W // 256), _pow2(-(-S // tile)))
    is_bf16 = x.dtype == torch.bfloat16
    tau = torch.empty(R, dtype=torch.int32, device=dev)
    cnt = torch.empty(R, _CNT_STRIDE, dtype=torch.int32, device=dev)
    gm = torch.empty(R, W, dtype=torch.int32, device=dev) if split > 1 else tau
    _group_max_kernel[(R, split)](x, gm, tau, cnt, S, k, x.stride(0), IS_BF16=is_bf16, W=W, SPLIT=split,
                                  UNROLL=unroll, num_warps=num_warps)
    if split > 1:
        _tau_kernel[(R,)](gm, tau, cnt, S, k, W=W, num_warps=num_warps)
    if stop <= 2:
        return out.view(*lead, k)
    bufk = torch.empty(R, cap, dtype=torch.int32, device=dev)
    bufi = torch.empty(R, cap, dtype=torch.int32, device=dev)
    _compact_kernel[(R, split)](x, tau, cnt, bufk, bufi, S, x.stride(0), IS_BF16=is_bf16, CAP=cap, TILE=tile,
                                SPLIT=split, UNROLL=unroll, num_warps=num_warps)
    if stop <= 3:
        return out.view(*lead, k)
    _select_kernel[(R,)](x, tau, cnt, bufk, bufi, out, S, k, x.stride(0), out.stride(0), IS_BF16=is_bf16,
                         NEG_KEY=_neg_inf_key(x.dtype), CAP=cap, TILE=tile,
                         POS_LEVELS=max(1, -(-(S - 1).bit_length() // 4)), num_warps=num_warps)
    return out.view(*lead, k)
