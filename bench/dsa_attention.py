"""GPU benchmark: one layer of DSA attention (indexer + top-k + sparse attention) vs dense attention.

Baseline: PyTorch SDPA (FlashAttention backend where it applies), causal in prefill; one new token per
sequence over a KV cache in decode. Measured in the same run, same inputs, bf16, top_k = 2048.

Shape sets
  (a) main attention 16 heads x 128 (MHA), indexer 16 heads x 64
  (b) DeepSeek-V3.2: MLA in MQA mode, 128 heads over one shared latent (key dim 576 = 512 + 64 RoPE,
      value dim 512 = the latent's first 512 dims), indexer 64 heads x 128

The indexer runs in FP8 e4m3 (per-token scales); index keys are kept in FP8, as a KV cache would.
Prefill processes query blocks, so memory stays bounded at 128K. Every DSA figure is checked against
dsa_runner.kernels' reference on sampled rows (index scores, and attention output for the same
selection). The table prints the speed-up over dense and the fraction of the roofline floor reached
(H100: 3.0 TB/s, 800 TFLOP/s bf16, 1600 TFLOP/s fp8).

Shape (b)'s dense baseline here is weak (no PyTorch kernel takes head dim 576: 13-16 % of its floor);
bench/dsa_gpu_floors.py measures (b) against dense baselines near their floors, at every length.

Usage: python bench/dsa_attention.py [--lengths 8192,32768,65536,131072] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsa_runner import kernels, triton_kernels  # noqa: E402

BW = 3.0e12
PEAK_BF16 = 800e12
PEAK_FP8 = 1600e12
TOP_K = 2048
DT = torch.bfloat16

SHAPES = {
    "a": dict(H=16, H_kv=16, d=128, dv=128, H_I=16, d_I=64, desc="MHA 16x128, indexer 16x64"),
    "b": dict(H=128, H_kv=1, d=576, dv=512, H_I=64, d_I=128, desc="MLA-MQA 128 heads, kv 576/v 512, indexer 64x128"),
}


def timed(fn, reps: int = 3, warmup: int = 1) -> float:
    """Median milliseconds of fn() over reps, after warmup calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def timed_graph(fn, reps: int = 5) -> float | None:
    """Median ms of replaying fn captured in a CUDA graph (how a server runs decode steps: no
    per-kernel launch cost); None when fn cannot be captured."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as e:  # noqa: BLE001 - report eager timings only
        print(f"  (CUDA graph capture failed: {type(e).__name__}: {e})", flush=True)
        return None
    return timed(graph.replay, reps)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


# --------------------------------------------------------------------------------------------------
# inputs


def make_layer(shape: dict, B: int, L: int, T: int, device="cuda"):
    """Random layer inputs: queries for the last T positions, keys/values (value may alias key)."""
    g = torch.Generator(device=device).manual_seed(0)
    H, H_kv, d, dv = shape["H"], shape["H_kv"], shape["d"], shape["dv"]
    q = torch.randn(B, H, T, d, device=device, dtype=DT, generator=g)
    k = torch.randn(B, H_kv, L, d, device=device, dtype=DT, generator=g)
    v = k[..., :dv] if H_kv == 1 else torch.randn(B, H_kv, L, dv, device=device, dtype=DT, generator=g)
    q_I = torch.randn(B, T, shape["H_I"], shape["d_I"], device=device, dtype=DT, generator=g)
    w = torch.rand(B, T, shape["H_I"], device=device, dtype=torch.float32, generator=g)
    k_I = torch.randn(B, L, shape["d_I"], device=device, dtype=DT, generator=g)
    k_fp8, k_scale = kernels.quantize_fp8(k_I)
    return dict(q=q, k=k, v=v, q_I=q_I, w=w, k_I=k_I, k_fp8=k_fp8, k_scale=k_scale.squeeze(-1))


# --------------------------------------------------------------------------------------------------
# dense baselines


def _sdpa(q, k, v, causal):
    """SDPA; where no fused kernel takes value dim != key dim, V is zero-padded to the key dim."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    except RuntimeError:
        pad = F.pad(v, (0, k.shape[-1] - v.shape[-1]))
        return F.scaled_dot_product_attention(q, k, pad, is_causal=causal)[..., : v.shape[-1]]


def dense_prefill(x, shape):
    q, k, v = x["q"], x["k"], x["v"]
    if shape["H_kv"] == 1:  # MLA in MQA mode: no flash kernel for head dim 576; mem-efficient SDPA
        k = k.expand(-1, shape["H"], -1, -1)
        v = v.expand(-1, shape["H"], -1, -1)
    return _sdpa(q, k, v, True)


def dense_decode(x, shape):
    q, k, v = x["q"], x["k"], x["v"]
    if shape["H_kv"] == 1:  # the 128 heads of one token as 128 query rows over the single latent head
        return _sdpa(q.transpose(1, 2), k, v, False)
    return _sdpa(q, k, v, False)


def model_check() -> dict:
    """The DSA attention function inside a transformers model on CUDA (Triton path, FP8 index keys in
    the Cache): a tiny random Llama, prefill + decode with cache (left-padded batch, repeat_interleave)
    against a full recompute."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from dsa_runner.attention import DSASettings, install
    from dsa_runner.indexer import IndexerConfig, ModelIndexers

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).cuda().float().eval()
    indexers = ModelIndexers(IndexerConfig(hidden_size=256, num_layers=2, index_heads=4, index_head_dim=32,
                                           rope_dim=16, top_k=16)).cuda().float()
    settings = DSASettings(top_k=16, fp8=True)
    install(model, indexers, settings)
    ids = torch.randint(0, 1000, (2, 80), device="cuda")
    am = torch.ones_like(ids)
    am[1, :9] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        cache = DynamicCache()
        model(input_ids=ids[:, :70], attention_mask=am[:, :70], position_ids=pos[:, :70], past_key_values=cache,
              use_cache=True)
        cache.batch_repeat_interleave(2)
        rep = lambda t: t.repeat_interleave(2, 0)  # noqa: E731
        worst = 0.0
        for i in range(70, 80):
            lg = model(input_ids=rep(ids[:, i:i + 1]), attention_mask=rep(am[:, :i + 1]),
                       position_ids=rep(pos[:, i:i + 1]), past_key_values=cache, use_cache=True).logits
            worst = max(worst, (lg[:, -1] - rep(full[:, i])).abs().max().item())
    return dict(decode_vs_recompute_max_abs=worst, logit_scale=full.abs().max().item())


# --------------------------------------------------------------------------------------------------
# DSA


def dsa_step(x, q_lo: int, q_hi: int, scaling: float, out: torch.Tensor, stage_times: dict | None = None,
             sparse_kw: dict | None = None):
    """DSA for queries q_lo..q_hi (positions) over keys 0..q_hi: FP8 index scores, top-k, sparse attention."""
    T_total = x["q"].shape[2]
    L = x["k"].shape[2]
    offset = L - T_total  # position of query row 0
    r0, r1 = q_lo - offset, q_hi - offset
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if stage_times is not None else None
    if ev:
        ev[0].record()
    q_fp8, w_eff = triton_kernels.quantize_queries_fp8(x["q_I"][:, r0:r1], x["w"][:, r0:r1])
    I = triton_kernels.index_scores(q_fp8, w_eff, x["k_fp8"][:, :q_hi], x["k_scale"][:, :q_hi], None)
    if ev:
        ev[1].record()
    top_k = kernels.select_top_k(I, TOP_K)  # the model's selection (on CUDA: plain torch.topk)
    if ev:
        ev[2].record()
    triton_kernels.sparse_attention(x["q"][:, :, r0:r1], x["k"][:, :, :q_hi], x["v"][:, :, :q_hi], top_k,
                                    scaling, out=out[:, r0:r1], **(sparse_kw or {}))
    if ev:
        ev[3].record()
        torch.cuda.synchronize()
        for name, a, b in (("indexer", 0, 1), ("top_k", 1, 2), ("attention", 2, 3)):
            stage_times[name] = stage_times.get(name, 0.0) + ev[a].elapsed_time(ev[b])
    return I, top_k


def dsa_prefill(x, scaling, out, chunk: int, stage_times=None, sparse_kw=None):
    L = x["k"].shape[2]
    for lo in range(0, L, chunk):
        dsa_step(x, lo, min(L, lo + chunk), scaling, out, stage_times, sparse_kw)


def dsa_decode(x, scaling, out, stage_times=None, sparse_kw=None):
    L = x["k"].shape[2]
    dsa_step(x, L - 1, L, scaling, out, stage_times, sparse_kw)


def check_rows(x, q_lo, q_hi, scaling, out, rows) -> dict:
    """Reference check on some query rows of the block q_lo..q_hi: index scores (fp32 reference from
    the bf16 inputs vs the FP8 kernel), top-k recall of the reference selection, attention output
    (reference with the kernel's selection vs the kernel)."""
    T_total = x["q"].shape[2]
    L = x["k"].shape[2]
    offset = L - T_total
    I, top_k = dsa_step(x, q_lo, q_hi, scaling, out)
    nb = min(2, x["q"].shape[0])  # the first sequences are enough (and keep the fp32 copies small)
    x = {k: v[:nb] for k, v in x.items()}
    I, top_k, out = I[:nb], top_k[:nb], out[:nb]
    rows = [r for r in rows if q_lo <= r < q_hi]
    idx = torch.tensor([r - q_lo for r in rows], device=I.device)
    B = x["q"].shape[0]
    S = q_hi
    allowed = torch.arange(S, device=I.device)[None, :] <= torch.tensor(rows, device=I.device)[:, None]
    allowed = allowed[None].expand(B, -1, -1)
    q_rows = x["q_I"][:, [r - offset for r in rows]]
    w_rows = x["w"][:, [r - offset for r in rows]]
    I_ref = kernels.index_scores_reference(q_rows, w_rows, x["k_I"][:, :S], allowed)
    I_ker = I[:, idx]
    finite = torch.isfinite(I_ref)
    err_I = rel_err(I_ker[finite], I_ref[finite])
    sel_ref = kernels.selection_mask(kernels.select_top_k(I_ref, TOP_K), S)
    sel_ker = kernels.selection_mask(top_k[:, idx].long(), S)
    recall = ((sel_ref & sel_ker).sum() / sel_ref.sum()).item()
    q = x["q"][:, :, [r - offset for r in rows]]
    ref = kernels.dsa_attention_reference(q, x["k"][:, :, :S], x["v"][:, :, :S], top_k[:, idx].long(), scaling)
    got = out[:, [r - offset for r in rows]]
    return dict(index_rel_err=err_I, top_k_recall_vs_fp32=recall, attn_rel_err=rel_err(got, ref))


# --------------------------------------------------------------------------------------------------
# roofline floors


def floors(shape, L, B, mode) -> dict:
    """Lower bounds in ms: each stage max(bytes / BW, flops / peak); sum over stages for DSA."""
    H, H_kv, d, dv, H_I, d_I = (shape[k] for k in ("H", "H_kv", "d", "dv", "H_I", "d_I"))
    kv_row = 2 * (H_kv * d + (0 if H_kv == 1 else H_kv * dv))  # bytes of one token's K (+V) row
    k_sel = min(TOP_K, L)
    if mode == "prefill":
        n_q = L
        pairs = L * (L + 1) / 2  # causal (query, key) pairs
        sel_pairs = sum(min(TOP_K, t + 1) for t in range(0, L, 64)) * 64
        dense_f = 2 * pairs * H * (d + dv)
        dense_b = L * kv_row + 2 * n_q * H * (d + dv)
        dense = max(dense_f / PEAK_BF16, dense_b / BW)
        idx = max(2 * pairs * H_I * d_I / PEAK_FP8, (pairs * 4 * 2) / BW)  # scores written + read by top-k
        attn = max(2 * sel_pairs * H * (d + dv) / PEAK_BF16, sel_pairs * kv_row / BW)
    else:
        n_q = B
        dense = max(2 * B * L * H * (d + dv) / PEAK_BF16, B * L * kv_row / BW)
        idx = max(2 * B * L * H_I * d_I / PEAK_FP8, B * L * (d_I + 4 + 4 * 2) / BW)
        attn = max(2 * B * k_sel * H * (d + dv) / PEAK_BF16, B * k_sel * kv_row / BW)
    return dict(dense=dense * 1e3, dsa=(idx + attn) * 1e3, dsa_indexer=idx * 1e3, dsa_attention=attn * 1e3)


# --------------------------------------------------------------------------------------------------


def run_case(name, shape, L, mode, args, tuned) -> dict:
    torch.cuda.empty_cache()
    scaling = shape["d"] ** -0.5
    if mode == "prefill":
        B, T = 1, L
    else:
        B = args.decode_batch if not (name == "a" and L > 65536) else args.decode_batch // 2
        T = 1
    x = make_layer(shape, B, L, T)
    out = torch.empty(B, T, shape["H"], shape["dv"], device="cuda", dtype=DT)
    res = dict(shape=name, mode=mode, L=L, B=B)
    # dense
    dense_limit = args.dense_b_max if name == "b" and mode == "prefill" else 1 << 30
    if L <= dense_limit:
        reps = 3 if L <= 65536 else 2
        res["dense_ms"] = timed(lambda: (dense_prefill if mode == "prefill" else dense_decode)(x, shape), reps)
        res["dense_note"] = "measured"
    else:  # quadratic extrapolation from the largest measured length of this shape
        prev = tuned["dense_prefill_b"]
        res["dense_ms"] = prev[1] * (L / prev[0]) ** 2
        res["dense_note"] = f"extrapolated x(L/{prev[0]})^2"
    if name == "b" and mode == "prefill" and L <= dense_limit:
        tuned["dense_prefill_b"] = (L, res["dense_ms"])
    # DSA
    chunk = max(256, min(L, (1 << 30) // (4 * L)))
    sparse_kw = tuned.get(f"sparse_kw_{name}", {})
    fn = (lambda: dsa_prefill(x, scaling, out, chunk, None, sparse_kw)) if mode == "prefill" else \
        (lambda: dsa_decode(x, scaling, out, None, sparse_kw))
    res["dsa_ms"] = timed(fn, 3 if L <= 65536 else 2)
    stages: dict = {}
    if mode == "prefill":
        dsa_prefill(x, scaling, out, chunk, stages, sparse_kw)
    else:
        dsa_decode(x, scaling, out, stages, sparse_kw)
    res["stages_ms"] = {k: round(v, 3) for k, v in stages.items()}
    if mode == "decode":  # both sides also as CUDA graphs (no launch overhead), the server's way
        res["dense_eager_ms"], res["dsa_eager_ms"] = res["dense_ms"], res["dsa_ms"]
        g_dense = timed_graph(lambda: dense_decode(x, shape))
        g_dsa = timed_graph(fn)
        if g_dense is not None and g_dsa is not None:
            res["dense_ms"], res["dsa_ms"] = g_dense, g_dsa
            res["dense_note"] = "CUDA graph"
    res["speedup"] = res["dense_ms"] / res["dsa_ms"]
    fl = floors(shape, L, B, mode)
    res["floor_ms"] = fl
    res["dense_floor_frac"] = fl["dense"] / res["dense_ms"]
    res["dsa_floor_frac"] = fl["dsa"] / res["dsa_ms"]
    # correctness on sampled rows
    if mode == "prefill":
        lo = max(0, L - chunk)
        rows = [L - 1, L - 7, lo + 3, lo + chunk // 2]
        res["check"] = check_rows(x, lo, L, scaling, out, rows)
    else:
        res["check"] = check_rows(x, L - 1, L, scaling, out, [L - 1])
    return res


def tune_sparse(name, shape, args) -> dict:
    """Pick the sparse-attention tile config: on prefill 8K for MQA-style shapes (tensor-core tiles),
    on decode 32K x 64 sequences for MHA (gather-bound)."""
    mqa = shape["H"] // shape["H_kv"] >= 16
    L = 8192 if mqa else 32768
    B, T = (1, L) if mqa else (args.decode_batch, 1)
    x = make_layer(shape, B, L, T)
    out = torch.empty(B, T, shape["H"], shape["dv"], device="cuda", dtype=DT)
    idx = torch.randint(0, L, (B, T, TOP_K), device="cuda", dtype=torch.int32)
    configs = ([dict(block_heads=gp, block_v=dvb) for gp, dvb in ((32, 256), (64, 128), (64, 256), (16, 512))]
               if mqa else [dict(block_n=bn, num_warps=nw) for bn, nw in ((32, 4), (64, 4), (128, 4), (64, 8), (128, 8))])
    best = None
    for kw in configs:
        try:
            ms = timed(lambda: triton_kernels.sparse_attention(x["q"], x["k"], x["v"], idx, 0.1, out=out, **kw), 3)
        except Exception as e:  # noqa: BLE001 - a tile that does not compile is skipped
            print(f"  tile {kw}: {type(e).__name__}", flush=True)
            continue
        print(f"  tile {kw}: {ms:.3f} ms (sparse attention, {'prefill 8K' if mqa else 'decode 32K x B'})", flush=True)
        if best is None or ms < best[0]:
            best = (ms, kw)
    # the two index-score kernels on one prefill block (2048 queries at the end of 32K keys)
    Lp, C = 32768, 2048
    xp = make_layer(shape, 1, Lp, C)
    q_fp8, q_scale = kernels.quantize_fp8(xp["q_I"])
    w_eff = xp["w"] * q_scale.squeeze(-1)
    for variant in ("rows", "heads_loop"):
        ms = timed(lambda: triton_kernels.index_scores(q_fp8, w_eff, xp["k_fp8"], xp["k_scale"], None,
                                                       variant=variant), 3)
        flops = 2 * C * Lp * shape["H_I"] * shape["d_I"]
        print(f"  index scores {variant:10s}: {ms:.3f} ms for 2048 x 32K ({flops / ms / 1e9:.0f} TFLOP/s fp8)",
              flush=True)
    return best[1] if best else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8192,32768,65536,131072")
    ap.add_argument("--shapes", default="a,b")
    ap.add_argument("--modes", default="prefill,decode")
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--dense-b-max", type=int, default=32768,
                    help="longest (b) prefill measured dense; longer ones are extrapolated (seconds each)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available() and triton_kernels.available("cuda"), "needs CUDA and Triton"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    try:
        print(f"model check (tiny Llama, DSA in transformers on CUDA): {model_check()}", flush=True)
    except Exception as e:  # noqa: BLE001 - report and go on with the kernel benchmark
        print(f"model check FAILED: {type(e).__name__}: {e}", flush=True)
    lengths = [int(v) for v in args.lengths.split(",")]
    results, tuned = [], {}
    t_start = time.time()
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        print(f"\n== shape ({name}): {shape['desc']}", flush=True)
        tuned[f"sparse_kw_{name}"] = tune_sparse(name, shape, args)
        for mode in args.modes.split(","):
            for L in lengths:
                try:
                    r = run_case(name, shape, L, mode, args, tuned)
                except torch.OutOfMemoryError as e:
                    print(f"  {mode} L={L}: out of memory ({e})", flush=True)
                    torch.cuda.empty_cache()
                    continue
                results.append(r)
                c = r["check"]
                if "dsa_eager_ms" in r:
                    print(f"  ({name}) {mode:7s} L={L:6d} eager: dense {r['dense_eager_ms']:.2f} ms,"
                          f" DSA {r['dsa_eager_ms']:.2f} ms", flush=True)
                print(f"  ({name}) {mode:7s} L={L:6d} B={r['B']:3d}  dense {r['dense_ms']:9.2f} ms"
                      f" [{r['dense_note']}]  DSA {r['dsa_ms']:8.2f} ms  x{r['speedup']:6.2f}"
                      f"  floor frac dense {r['dense_floor_frac']:.2f} dsa {r['dsa_floor_frac']:.2f}"
                      f"  stages {r['stages_ms']}  check I {c['index_rel_err']:.3f}"
                      f" recall {c['top_k_recall_vs_fp32']:.3f} attn {c['attn_rel_err']:.4f}"
                      f"  ({time.time() - t_start:.0f}s)", flush=True)
    print("\ndecode rows: both sides replayed as CUDA graphs (eager timings in the JSON and log)")
    print("\n| shape | mode | L | B | dense ms | DSA ms | speed-up | dense floor frac | DSA floor frac |"
          " DSA stages ms (indexer/top-k/attn) | attn rel err | top-k recall fp8 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["stages_ms"]
        note = {"measured": "", "CUDA graph": " (graph)"}.get(r["dense_note"], " (extrap.)")
        print(f"| {r['shape']} | {r['mode']} | {r['L'] // 1024}K | {r['B']} | {r['dense_ms']:.2f}{note} |"
              f" {r['dsa_ms']:.2f} | {r['speedup']:.2f}x | {r['dense_floor_frac']:.2f} | {r['dsa_floor_frac']:.2f} |"
              f" {s.get('indexer', 0):.2f}/{s.get('top_k', 0):.2f}/{s.get('attention', 0):.2f} |"
              f" {r['check']['attn_rel_err']:.4f} | {r['check']['top_k_recall_vs_fp32']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(results=results, tuned=tuned), indent=1, default=str))


if __name__ == "__main__":
    main()
