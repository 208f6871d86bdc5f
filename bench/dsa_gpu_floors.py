"""GPU benchmark: DSA against dense baselines that reach their floors, DeepSeek's MLA shape, every length measured.

Shape (b) of bench/dsa_attention.py: MLA in MQA mode, 128 query heads over one latent KV head (key 576 =
512 latent + 64 RoPE, value = the latent's first 512), indexer 64 heads x 128 in FP8 e4m3, top-k 2048, bf16.

Decode (B sequences of L cached tokens, one new token each; every step replayed as a CUDA graph):
  dense  split-K flash-decoding MQA kernel (dsa_runner.triton_mla) over every cached row;
  DSA    FP8 indexer over the index keys of every position + top-k + the same kernel over the selected rows.
Prefill (one sequence of L tokens, causal):
  dense  FlashAttention in MLA's MHA mode, as DeepSeek runs dense prefill: 128 heads, qk 192, v 128
         (PyTorch SDPA; the cuDNN and flash backends are both timed, the faster is the baseline);
  DSA    indexer over all causal pairs + top-k + sparse MQA attention, in blocks of queries.

Ceilings are measured in the same run (device-to-device copy bandwidth, bf16 and FP8 matrix products) and
every figure is printed as a fraction of its floor, both against the datasheet (4.8 TB/s, 989 TFLOP/s bf16,
1979 FP8) and against the measured ceilings. A floor is max(bytes / bandwidth, FLOPs / rate) per stage,
summed over stages. Correctness: the kernels against PyTorch references at small sizes (max abs error).

Usage: python bench/dsa_gpu_floors.py [--lengths 8192,32768,65536,131072] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsa_runner import kernels, triton_kernels, triton_mla  # noqa: E402

DATASHEET = dict(bw=4.8e12, bf16=989e12, fp8=1979e12, name="H200 SXM datasheet")
H, D, DV, H_I, D_I, TOP_K = 128, 576, 512, 64, 128, 2048
ROW_BYTES = D * 2  # one cached latent row, bf16
SCALING = 192 ** -0.5  # MLA's softmax scale (qk head dim 128 + 64) also in the absorbed form
DT = torch.bfloat16


# --------------------------------------------------------------------------------------------------
# timing


def bench_ms(fn, reps: int = 10, warmup: int = 2) -> float:
    """Median ms over reps (CUDA events), after warmup calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def graph_ms(fn, reps: int = 20) -> float:
    """Median ms of replaying fn as a CUDA graph (a server's decode step: no launch gaps)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return bench_ms(g.replay, reps, warmup=3)


def ceilings() -> dict:
    """What this device reaches: copy bandwidth (bytes read + written), bf16 and FP8 matrix products."""
    n = 1 << 31  # 4 GiB buffers, far beyond L2
    src = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src), 10)
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=DT)
    b = torch.randn(m, m, device="cuda", dtype=DT)
    bf16_ms = bench_ms(lambda: a @ b, 10)
    res = dict(copy_bw=2 * n / (copy_ms * 1e-3), bf16=2 * m ** 3 / (bf16_ms * 1e-3))
    try:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), device="cuda")
        fp8_ms = bench_ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=DT), 10)
        res["fp8"] = 2 * m ** 3 / (fp8_ms * 1e-3)
    except Exception as e:  # noqa: BLE001 - an FP8 ceiling is then the datasheet's
        print(f"  fp8 matmul failed ({type(e).__name__}: {e}); using the datasheet rate", flush=True)
        res["fp8"] = DATASHEET["fp8"]
    return res


def floor_ms(stages: list[tuple[float, float, str]], peak: dict) -> float:
    """Sum over stages of max(bytes / bw, flops / rate[kind]) in ms; stages: (bytes, flops, 'bf16'|'fp8')."""
    bw = peak.get("copy_bw", peak.get("bw"))
    return 1e3 * sum(max(by / bw, fl / peak[kind]) for by, fl, kind in stages)


# --------------------------------------------------------------------------------------------------
# inputs


def make_decode(B: int, L: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = dict(q=torch.randn(B, 1, H, D, device="cuda", dtype=DT, generator=g),
             kv=torch.randn(B, L, D, device="cuda", dtype=DT, generator=g),
             q_I=torch.randn(B, 1, H_I, D_I, device="cuda", dtype=DT, generator=g),
             w=torch.rand(B, 1, H_I, device="cuda", generator=g))
    k_I = torch.randn(B, L, D_I, device="cuda", dtype=DT, generator=g)
    x["k_fp8"], ks = kernels.quantize_fp8(k_I)
    x["k_scale"] = ks.squeeze(-1).contiguous()
    x["k_I"] = k_I if B * L <= (1 << 24) else None  # fp32-reference checks only at small sizes
    return x


# --------------------------------------------------------------------------------------------------
# DSA pieces


# tile choices, replaced by the tuned ones in main()
INDEXER = dict(decode=dict(block_n=128, iters=8, num_warps=4, num_stages=3), prefill_tile=(64, 128, 4),
               scores=torch.float32)


def dsa_indexer(q_I, w, k_fp8, k_scale):
    """FP8 index scores: queries quantised per (token, head), the decode kernel for one token a sequence."""
    q_fp8, w_eff = triton_kernels.quantize_queries_fp8(q_I, w)
    if q_I.shape[1] == 1:
        return triton_kernels.index_scores_decode(q_fp8, w_eff, k_fp8, k_scale, out_dtype=INDEXER["scores"],
                                                  **INDEXER["decode"])
    return triton_kernels.index_scores(q_fp8, w_eff, k_fp8, k_scale, None, out_dtype=INDEXER["scores"],
                                       prefill_tile=INDEXER["prefill_tile"])


def dsa_select(I):
    return kernels.select_top_k(I, TOP_K).to(torch.int32)


def dense_decode(x, cfg, out):
    return triton_mla.mqa_attention(x["q"], x["kv"], DV, SCALING, None, out=out, **cfg)


def dense_decode_gemm(x, out):
    """Dense decode as two cuBLAS batched products around a softmax (scores materialised in bf16): Q.K^T
    (B, 128 x 576 x L), softmax, P.V (B, 128 x L x 512). More bytes than a fused kernel, faster tensor cores."""
    B, L = x["kv"].shape[:2]
    s = torch.matmul(x["q"].view(B, H, D) * SCALING, x["kv"].transpose(1, 2))
    p = torch.softmax(s, dim=-1)
    out.view(B, H, DV).copy_(torch.matmul(p, x["kv"][..., :DV]))
    return out


def dsa_decode(x, cfg, out):
    I = dsa_indexer(x["q_I"], x["w"], x["k_fp8"], x["k_scale"])
    idx = dsa_select(I)
    triton_mla.mqa_attention(x["q"], x["kv"], DV, SCALING, idx, out=out, **cfg)
    return I, idx


def decode_floor_stages(B: int, L: int):
    dense = [(B * L * ROW_BYTES, 2 * B * L * H * (D + DV), "bf16")]
    k = min(TOP_K, L)
    sb = INDEXER["scores"].itemsize
    dsa = [(B * L * (D_I + 4 + sb), 2 * B * L * H_I * D_I, "fp8"),  # fp8 key + its scale read, score written
           (B * L * sb, 0, "bf16"),  # top-k reads the scores
           (B * k * ROW_BYTES, 2 * B * k * H * (D + DV), "bf16")]
    return dense, dsa


# --------------------------------------------------------------------------------------------------
# correctness at small sizes


def checks(out_log, cfg_dense: dict, cfg_sparse: dict) -> dict:
    g = torch.Generator(device="cuda").manual_seed(5)
    res = {}
    B, L = 2, 3000
    q = torch.randn(B, 1, H, D, device="cuda", dtype=DT, generator=g)
    kv = torch.randn(B, L, D, device="cuda", dtype=DT, generator=g)
    ref = triton_mla.mqa_attention_reference(q, kv, DV, SCALING).float()
    for splits in (1, 4):
        got = triton_mla.mqa_attention(q, kv, DV, SCALING, **dict(cfg_dense, splits=splits)).float()
        res[f"dense_decode_splits{splits}_max_abs"] = (got - ref).abs().max().item()
    T = 4
    qs = torch.randn(B, T, H, D, device="cuda", dtype=DT, generator=g)
    scores = torch.rand(B, T, L, device="cuda", generator=g)
    scores[:, 0, 100:] = float("-inf")  # a token with only 100 visible keys: -1 entries in its selection
    idx = kernels.select_top_k(scores, TOP_K).to(torch.int32)
    ref = triton_mla.mqa_attention_reference(qs, kv, DV, SCALING, idx).float()
    for splits in (1, 4):
        got = triton_mla.mqa_attention(qs, kv, DV, SCALING, idx, **dict(cfg_sparse, splits=splits)).float()
        res[f"sparse_splits{splits}_max_abs"] = (got - ref).abs().max().item()
    res["output_abs_scale"] = ref.abs().max().item()
    # the indexer (FP8) against fp32 scores from the same bf16 inputs, and the selection's recall
    x = make_decode(2, 8192)
    I = dsa_indexer(x["q_I"], x["w"], x["k_fp8"], x["k_scale"])
    I_ref = kernels.index_scores_reference(x["q_I"].float(), x["w"], x["k_I"].float(), None)
    res["index_scores_rel_err"] = ((I - I_ref).norm() / I_ref.norm()).item()
    sel = kernels.selection_mask(dsa_select(I).long(), 8192)
    sel_ref = kernels.selection_mask(kernels.select_top_k(I_ref, TOP_K), 8192)
    res["top_k_recall_fp8_vs_fp32"] = ((sel & sel_ref).sum() / sel_ref.sum()).item()
    print(f"checks: {res}", flush=True)
    out_log["checks"] = res
    return res


# --------------------------------------------------------------------------------------------------
# tuning (tile sizes, splits) on one size, then fixed for every length


def tune(label, configs, make_fn) -> dict:
    best = None
    for cfg in configs:
        try:
            ms = bench_ms(make_fn(cfg), 5)
        except Exception as e:  # noqa: BLE001 - a tile that does not compile is skipped
            print(f"  {label} {cfg}: {type(e).__name__} {str(e)[:100]}", flush=True)
            continue
        print(f"  {label} {cfg}: {ms:.3f} ms", flush=True)
        if best is None or ms < best[0]:
            best = (ms, cfg)
    print(f"  {label} best: {best}", flush=True)
    return best[1]


def tune_indexer(B: int) -> None:
    """Indexer tiles (decode kernel on B x 32K; prefill kernel on 2048 queries x 32K) and the prefill
    score dtype (decode and prefill): bf16 scores halve the bytes top-k reads, kept only if they select what fp32 scores do."""
    x = make_decode(B, 32768)
    q_fp8, w_eff = triton_kernels.quantize_queries_fp8(x["q_I"], x["w"])
    old = bench_ms(lambda: triton_kernels.index_scores(q_fp8, w_eff, x["k_fp8"], x["k_scale"], None), 10)
    print(f"  indexer decode 32K, general kernel: {old:.3f} ms", flush=True)
    ref = triton_kernels.index_scores(q_fp8, w_eff, x["k_fp8"], x["k_scale"], None)
    cands = [dict(block_n=128, iters=16, num_warps=4, num_stages=4),
             dict(block_n=128, iters=16, num_warps=4, num_stages=4, transposed=True),
             dict(block_n=128, iters=8, num_warps=4, num_stages=3, transposed=True),
             dict(block_n=256, iters=8, num_warps=8, num_stages=3, transposed=True),
             dict(block_n=64, iters=32, num_warps=4, num_stages=6, transposed=True)]
    best = None
    for c in cands:
        try:
            got = triton_kernels.index_scores_decode(q_fp8, w_eff, x["k_fp8"], x["k_scale"], **c)
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            ms = bench_ms(lambda: triton_kernels.index_scores_decode(q_fp8, w_eff, x["k_fp8"], x["k_scale"], **c), 10)
        except Exception as e:  # noqa: BLE001
            print(f"  indexer decode {c}: {type(e).__name__} {str(e)[:100]}", flush=True)
            continue
        print(f"  indexer decode {c}: {ms:.3f} ms (max rel diff to the general kernel {err:.1e})", flush=True)
        if best is None or ms < best[0]:
            best = (ms, c)
    INDEXER["decode"] = best[1]
    g = torch.Generator(device="cuda").manual_seed(3)
    C, S = 2048, 32768
    q_I = torch.randn(1, C, H_I, D_I, device="cuda", dtype=DT, generator=g)
    w = torch.rand(1, C, H_I, device="cuda", generator=g)
    k_fp8, ks = kernels.quantize_fp8(torch.randn(1, S, D_I, device="cuda", dtype=DT, generator=g))
    ks = ks.squeeze(-1).contiguous()
    q_fp8, w_eff = triton_kernels.quantize_queries_fp8(q_I, w)
    flops = 2 * C * S * H_I * D_I  # all pairs (queries at the end of the keys: nothing masked)
    best = None
    for tile in ((64, 128, 4), (128, 128, 8), (128, 64, 4), (64, 256, 8), (128, 128, 4)):
        try:
            ms = bench_ms(lambda: triton_kernels.index_scores(q_fp8, w_eff, k_fp8, ks, None, prefill_tile=tile), 5)
        except Exception as e:  # noqa: BLE001
            print(f"  indexer prefill {tile}: {type(e).__name__} {str(e)[:100]}", flush=True)
            continue
        print(f"  indexer prefill {tile}: {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s fp8)", flush=True)
        if best is None or ms < best[0]:
            best = (ms, tile)
    INDEXER["prefill_tile"] = best[1]
    I32 = triton_kernels.index_scores(q_fp8, w_eff, k_fp8, ks, None, prefill_tile=best[1])
    I16 = I32.to(torch.bfloat16)
    t32 = bench_ms(lambda: kernels.select_top_k(I32, TOP_K), 5)
    t16 = bench_ms(lambda: kernels.select_top_k(I16, TOP_K), 5)
    s32 = kernels.selection_mask(kernels.select_top_k(I32, TOP_K), S)
    s16 = kernels.selection_mask(kernels.select_top_k(I16, TOP_K), S)
    recall = ((s32 & s16).sum() / s32.sum()).item()
    print(f"  top-k 2048 of 2048 x 32K scores: fp32 {t32:.3f} ms, bf16 {t16:.3f} ms;"
          f" bf16 selection keeps {recall:.4f} of the fp32 one", flush=True)
    if t16 < t32 and recall >= 0.99:
        INDEXER["scores"] = torch.bfloat16


def tune_decode(B: int, full: bool) -> tuple[dict, dict]:
    """MQA tiles and splits for dense decode (every row) and DSA decode (2048 gathered rows), B x 32K."""
    x = make_decode(B, 32768)
    out = torch.empty(B, 1, H, DV, device="cuda", dtype=DT)
    cfg_dense = tune("dense decode 32K", tile_configs((2, 4) if full else (2,)),
                     lambda c: (lambda: dense_decode(x, c, out)))
    idx = torch.stack([torch.randperm(32768, device="cuda")[:TOP_K] for _ in range(B)])[:, None].int()
    cfg_sparse = tune("sparse decode 32K", tile_configs((1, 2) if full else (1,)),
                      lambda c: (lambda: triton_mla.mqa_attention(x["q"], x["kv"], DV, SCALING, idx, out=out, **c)))
    return cfg_dense, cfg_sparse


def tune_prefill() -> dict:
    """MQA tiles for DSA prefill: 1024 query tokens, each over 2048 gathered rows of 32K."""
    C = 1024
    q = torch.randn(1, C, H, D, device="cuda", dtype=DT)
    kv = torch.randn(1, 32768, D, device="cuda", dtype=DT)
    idx = torch.stack([torch.randperm(32768, device="cuda")[:TOP_K] for _ in range(C)])[None].int()
    out = torch.empty(1, C, H, DV, device="cuda", dtype=DT)
    return tune("sparse prefill 1024 queries", tile_configs((1,)),
                lambda c: (lambda: triton_mla.mqa_attention(q, kv, DV, SCALING, idx, out=out, **c)))


def tile_configs(split_choices):
    # q's tile stays in shared memory (64 heads x 576 = 72 KB) next to the pipelined key tiles, so 128-head
    # tiles, 128-key tiles and 3 stages of 64 keys exceed the 227 KB (seen: 254-360 KB asked); 4 warps
    # cannot hold the 64 x 512 accumulator (spills, 3x slower)
    base = [dict(block_heads=64, block_n=64, num_warps=8, num_stages=2),
            dict(block_heads=64, block_n=32, num_warps=8, num_stages=3),
            dict(block_heads=64, block_n=32, num_warps=8, num_stages=2),
            dict(block_heads=64, block_n=64, num_warps=8, num_stages=2, warp_specialize=True)]
    return [dict(c, splits=s) for c in base for s in split_choices]


# --------------------------------------------------------------------------------------------------
# decode


def run_decode(L, B, cfg_dense, cfg_sparse, peaks):
    torch.cuda.empty_cache()
    x = make_decode(B, L)
    out = torch.empty(B, 1, H, DV, device="cuda", dtype=DT)
    r = dict(mode="decode", L=L, B=B)
    # two dense kernels: the fused split-K one and cuBLAS products around a softmax; the faster is the baseline
    ref = triton_mla.mqa_attention_reference(x["q"][:2], x["kv"][:2], DV, SCALING).float()
    variants = {}
    for name, fn in (("fused_split_k", lambda: dense_decode(x, cfg_dense, out)),
                     ("cublas_gemm_softmax", lambda: dense_decode_gemm(x, out))):
        try:
            ms = graph_ms(fn)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        fn()
        variants[name] = dict(ms=ms, max_abs=(out[:2].float() - ref).abs().max().item())
    r["dense_variants"] = variants
    r["dense_kernel"] = min(variants, key=lambda k: variants[k]["ms"])
    r["dense_ms"] = variants[r["dense_kernel"]]["ms"]
    r["dense_max_abs"] = variants[r["dense_kernel"]]["max_abs"]
    r["dsa_ms"] = graph_ms(lambda: dsa_decode(x, cfg_sparse, out))
    I, idx = dsa_decode(x, cfg_sparse, out)
    ref = triton_mla.mqa_attention_reference(x["q"][:2], x["kv"][:2], DV, SCALING, idx[:2]).float()
    r["dsa_attn_max_abs"] = (out[:2].float() - ref).abs().max().item()
    r["stage_ms"] = dict(
        indexer=graph_ms(lambda: dsa_indexer(x["q_I"], x["w"], x["k_fp8"], x["k_scale"])),
        top_k=graph_ms(lambda: dsa_select(I)),
        attention=graph_ms(lambda: triton_mla.mqa_attention(x["q"], x["kv"], DV, SCALING, idx, out=out,
                                                            **cfg_sparse)))
    dense_st, dsa_st = decode_floor_stages(B, L)
    finish(r, dense_st, dsa_st, peaks,
           dsa_stage_floors=dict(indexer=[dsa_st[0]], top_k=[dsa_st[1]], attention=[dsa_st[2]]))
    r["dense_bytes_frac_datasheet"] = dense_st[0][0] / DATASHEET["bw"] / (r["dense_ms"] * 1e-3)
    r["dense_bytes_frac_copy"] = dense_st[0][0] / peaks["measured"]["copy_bw"] / (r["dense_ms"] * 1e-3)
    r["dense_tflops"] = dense_st[0][1] / (r["dense_ms"] * 1e-3) / 1e12
    # DSA against the dense floor itself (what no dense kernel can beat)
    r["dsa_vs_dense_floor"] = r["floors"]["dense_measured"] / r["dsa_ms"]
    r["dsa_vs_dense_bytes_floor"] = 1e3 * dense_st[0][0] / DATASHEET["bw"] / r["dsa_ms"]
    return r


def finish(r, dense_st, dsa_st, peaks, dsa_stage_floors):
    r["speedup"] = r["dense_ms"] / r["dsa_ms"]
    fl = {}
    for name, pk in (("datasheet", DATASHEET), ("measured", peaks["measured"])):
        fl[f"dense_{name}"] = floor_ms(dense_st, pk)
        fl[f"dsa_{name}"] = floor_ms(dsa_st, pk)
    r["floors"] = fl
    r["dense_floor_frac"] = {k: fl[f"dense_{k}"] / r["dense_ms"] for k in ("datasheet", "measured")}
    r["dsa_floor_frac"] = {k: fl[f"dsa_{k}"] / r["dsa_ms"] for k in ("datasheet", "measured")}
    r["stage_floor_frac_measured"] = {s: floor_ms(st, peaks["measured"]) / r["stage_ms"][s]
                                      for s, st in dsa_stage_floors.items() if s in r["stage_ms"]}


# --------------------------------------------------------------------------------------------------
# prefill


def fa_mha_prefill(L) -> dict:
    """FlashAttention in MLA's MHA mode: 128 heads, qk 192, v 128, causal; each SDPA backend that runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, H, L, 192, device="cuda", dtype=DT, generator=g)
    k = torch.randn(1, H, L, 192, device="cuda", dtype=DT, generator=g)
    v = torch.randn(1, H, L, 128, device="cuda", dtype=DT, generator=g)
    flops = 2 * (L * (L + 1) / 2) * H * (192 + 128)
    res = {}
    reps = 5 if L <= 32768 else 3
    for name, backend, pad in (("cudnn", SDPBackend.CUDNN_ATTENTION, False),
                               ("flash", SDPBackend.FLASH_ATTENTION, False),
                               ("flash_v_padded", SDPBackend.FLASH_ATTENTION, True)):
        vv = F.pad(v, (0, 64)) if pad else v
        try:
            with sdpa_kernel([backend]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the backend says why it refuses: the exception says it too
                ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=True), reps, 1)
        except Exception as e:  # noqa: BLE001 - a backend that does not take these shapes is skipped
            res[name] = f"unavailable: {type(e).__name__}: {str(e)[:80]}"
            continue
        res[name] = dict(ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
        if name == "flash":
            break  # the padded run is only a fallback
    return res


def run_prefill(L, cfg_prefill, peaks):
    torch.cuda.empty_cache()
    r = dict(mode="prefill", L=L, B=1)
    fa = fa_mha_prefill(L)
    r["fa_mha"] = fa
    timed = {k: v for k, v in fa.items() if isinstance(v, dict)}
    best = min(timed, key=lambda k: timed[k]["ms"])
    r["dense_ms"], r["dense_backend"], r["dense_tflops"] = timed[best]["ms"], best, timed[best]["tflops"]
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, L, H, D, device="cuda", dtype=DT, generator=g)
    kv = torch.randn(1, L, D, device="cuda", dtype=DT, generator=g)
    q_I = torch.randn(1, L, H_I, D_I, device="cuda", dtype=DT, generator=g)
    w = torch.rand(1, L, H_I, device="cuda", generator=g)
    k_fp8, ks = kernels.quantize_fp8(torch.randn(1, L, D_I, device="cuda", dtype=DT, generator=g))
    ks = ks.squeeze(-1).contiguous()
    out = torch.empty(1, L, H, DV, device="cuda", dtype=DT)
    chunk = max(256, min(L, (1 << 30) // (4 * L)))
    st = dict(indexer=0.0, top_k=0.0, attention=0.0)

    def prefill(stage_times=None):
        for lo in range(0, L, chunk):
            hi = min(L, lo + chunk)
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if stage_times is not None else None
            if ev:
                ev[0].record()
            I = dsa_indexer(q_I[:, lo:hi], w[:, lo:hi], k_fp8[:, :hi], ks[:, :hi])
            if ev:
                ev[1].record()
            idx = dsa_select(I)
            if ev:
                ev[2].record()
            triton_mla.mqa_attention(q[:, lo:hi], kv, DV, SCALING, idx, out=out[:, lo:hi], **cfg_prefill)
            if ev:
                ev[3].record()
                torch.cuda.synchronize()
                for n, a, b in (("indexer", 0, 1), ("top_k", 1, 2), ("attention", 2, 3)):
                    stage_times[n] += ev[a].elapsed_time(ev[b])
        return idx

    r["dsa_ms"] = bench_ms(prefill, 3 if L <= 32768 else 2, 1)
    idx = prefill(st)
    r["stage_ms"] = st
    rows = [L - 1, L - chunk // 2] if L > chunk else [L - 1]
    lo = (L - 1) // chunk * chunk
    sel = idx[:, [rr - lo for rr in rows if rr >= lo]]
    ref = triton_mla.mqa_attention_reference(q[:, [rr for rr in rows if rr >= lo]], kv, DV, SCALING, sel).float()
    r["dsa_attn_max_abs"] = (out[:, [rr for rr in rows if rr >= lo]].float() - ref).abs().max().item()
    pairs = L * (L + 1) / 2
    sel_pairs = sum(min(TOP_K, t + 1) for t in range(L))
    dense_st = [(3 * L * H * 192 * 2 + L * H * 128 * 2 * 2, 2 * pairs * H * (192 + 128), "bf16")]
    sb = INDEXER["scores"].itemsize
    idx_st = [(pairs * sb + L * (D_I + 4), 2 * pairs * H_I * D_I, "fp8")]  # causal scores written
    topk_st = [(pairs * sb, 0, "bf16")]  # and read by top-k
    attn_st = [(sel_pairs * ROW_BYTES, 2 * sel_pairs * H * (D + DV), "bf16")]
    finish(r, dense_st, idx_st + topk_st + attn_st, peaks,
           dsa_stage_floors=dict(indexer=idx_st, top_k=topk_st, attention=attn_st))
    return r


# --------------------------------------------------------------------------------------------------


def markdown_tables(log: dict) -> str:
    """The RESULTS.md tables from a results log (floor fractions: measured ceilings / datasheet)."""
    c = log["ceilings"]
    lines = [f"Ceilings measured in the run: copy {c['copy_bw'] / 1e12:.2f} TB/s (read + write), bf16 "
             f"{c['bf16'] / 1e12:.0f} TFLOP/s, FP8 {c['fp8'] / 1e12:.0f} TFLOP/s; datasheet 4.8 TB/s, 989, 1979.", "",
             "| decode L | B | dense ms (kernel) | dense TFLOP/s | dense floor frac | dense bytes-floor frac |"
             " DSA ms | DSA floor frac | DSA stages ms idx/top-k/attn (stage floor frac) | DSA vs dense kernel |"
             " DSA vs dense floor | DSA vs dense bytes floor |", "|" + "---|" * 12]
    for r in log["results"]:
        if r["mode"] != "decode":
            continue
        st, sf = r["stage_ms"], r["stage_floor_frac_measured"]
        stages = "/".join(f"{st[k]:.3f} ({sf.get(k, 0):.2f})" for k in ("indexer", "top_k", "attention"))
        lines.append(
            f"| {r['L'] // 1024}K | {r['B']} | {r['dense_ms']:.3f} ({r['dense_kernel']}) | {r['dense_tflops']:.0f} |"
            f" {r['dense_floor_frac']['measured']:.2f} / {r['dense_floor_frac']['datasheet']:.2f} |"
            f" {r['dense_bytes_frac_copy']:.2f} / {r['dense_bytes_frac_datasheet']:.2f} | {r['dsa_ms']:.3f} |"
            f" {r['dsa_floor_frac']['measured']:.2f} / {r['dsa_floor_frac']['datasheet']:.2f} | {stages} |"
            f" {r['speedup']:.2f}x | {r['dsa_vs_dense_floor']:.2f}x | {r['dsa_vs_dense_bytes_floor']:.2f}x |")
    lines += ["", "| prefill L | FA MHA-mode ms (backend) | FA TFLOP/s | FA floor frac | DSA ms | DSA floor frac |"
              " DSA stages ms idx/top-k/attn (stage floor frac) | DSA vs FA |", "|" + "---|" * 8]
    for r in log["results"]:
        if r["mode"] != "prefill":
            continue
        st, sf = r["stage_ms"], r["stage_floor_frac_measured"]
        stages = "/".join(f"{st[k]:.1f} ({sf.get(k, 0):.2f})" for k in ("indexer", "top_k", "attention"))
        lines.append(
            f"| {r['L'] // 1024}K | {r['dense_ms']:.1f} ({r['dense_backend']}) | {r['dense_tflops']:.0f} |"
            f" {r['dense_floor_frac']['measured']:.2f} / {r['dense_floor_frac']['datasheet']:.2f} | {r['dsa_ms']:.1f} |"
            f" {r['dsa_floor_frac']['measured']:.2f} / {r['dsa_floor_frac']['datasheet']:.2f} | {stages} |"
            f" {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8192,32768,65536,131072")
    ap.add_argument("--modes", default="decode,prefill")
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--tune", default="full", choices=["full", "quick", "none"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available() and triton_mla.available("cuda"), "needs CUDA and Triton"
    log: dict = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=[])
    print(f"device: {log['device']}, torch {torch.__version__}", flush=True)
    t0 = time.time()

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(log, indent=1, default=str))

    measured = ceilings()
    peaks = dict(measured=measured)
    log["ceilings"] = measured
    print(f"ceilings: copy {measured['copy_bw'] / 1e12:.2f} TB/s (read+write), bf16 {measured['bf16'] / 1e12:.0f}"
          f" TFLOP/s, fp8 {measured['fp8'] / 1e12:.0f} TFLOP/s  ({time.time() - t0:.0f}s)", flush=True)
    B = args.decode_batch
    lengths = [int(v) for v in args.lengths.split(",")]
    default = dict(block_heads=64, block_n=64, num_warps=8, num_stages=2)
    cfg_dense = dict(default, splits=4)
    cfg_sparse = dict(default, splits=4)
    cfg_prefill = dict(default, splits=1)
    if args.tune != "none":
        tune_indexer(B)
        cfg_dense, cfg_sparse = tune_decode(B, args.tune == "full")
        cfg_prefill = tune_prefill()
    log["configs"] = dict(dense=cfg_dense, sparse_decode=cfg_sparse, sparse_prefill=cfg_prefill,
                          indexer={k: str(v) for k, v in INDEXER.items()})
    print(f"configs: {log['configs']}  ({time.time() - t0:.0f}s)", flush=True)
    checks(log, cfg_dense, cfg_sparse)
    save()
    for mode in args.modes.split(","):
        for L in lengths:
            try:
                r = run_decode(L, B, cfg_dense, cfg_sparse, peaks) if mode == "decode" else \
                    run_prefill(L, cfg_prefill, peaks)
            except torch.OutOfMemoryError as e:
                print(f"  {mode} {L}: out of memory ({e})", flush=True)
                torch.cuda.empty_cache()
                continue
            log["results"].append(r)
            save()
            print(f"  {mode:7s} L={L:6d}: dense {r['dense_ms']:.3f} ms ({r['dense_tflops']:.0f} TFLOP/s,"
                  f" floor frac {r['dense_floor_frac']['measured']:.2f} measured /"
                  f" {r['dense_floor_frac']['datasheet']:.2f} datasheet)  DSA {r['dsa_ms']:.3f} ms"
                  f" (floor frac {r['dsa_floor_frac']['measured']:.2f} / {r['dsa_floor_frac']['datasheet']:.2f})"
                  f"  x{r['speedup']:.2f}  stages { {k: round(v, 3) for k, v in r['stage_ms'].items()} }"
                  f"  ({time.time() - t0:.0f}s)", flush=True)
            if mode == "decode":
                print(f"    dense bytes floor frac: {r['dense_bytes_frac_datasheet']:.2f} of 4.8 TB/s,"
                      f" {r['dense_bytes_frac_copy']:.2f} of measured copy; DSA vs dense floor"
                      f" x{r['dsa_vs_dense_floor']:.2f} (vs bytes-only floor x{r['dsa_vs_dense_bytes_floor']:.2f});"
                      f" max abs dense {r['dense_max_abs']:.2e} dsa {r['dsa_attn_max_abs']:.2e};"
                      f" dense kernels {r['dense_variants']}", flush=True)
            else:
                print(f"    FA MHA-mode: {r['fa_mha']}; max abs dsa {r['dsa_attn_max_abs']:.2e}", flush=True)
    log["wall_s"] = time.time() - t0
    save()
    print("\n" + markdown_tables(log), flush=True)


if __name__ == "__main__":
    main()
