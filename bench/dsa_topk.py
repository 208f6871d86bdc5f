"""DSA top-k on a GPU: the Triton radix select (dsa_runner/triton_topk.py) against torch.topk.

On the scores bench/dsa_gpu_floors.py selects from (FP8 indexer, MLA shape (b), random inputs): decode
(B sequences x L keys, bf16 and fp32) and prefill blocks of 2048 causal queries (bf16), plus i.i.d. normal
scores. For each: exactness against torch.topk (per row, the multiset of selected scores), the time of both
(CUDA-graph replay), the tile choices, and the steps timed by launching only the first kernels (group
maxima and threshold, + compaction, all). Also how many candidates pass the threshold (emulated in PyTorch).

    python bench/dsa_topk.py --out topk.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dsa_gpu_floors as floors  # noqa: E402

from dsa_runner import triton_topk  # noqa: E402

TOP_K = floors.TOP_K
NEG_INF = float("-inf")


def torch_select(I: torch.Tensor, k: int) -> torch.Tensor:
    """What kernels.select_top_k did on CUDA before: torch.topk, -1 for selected -inf scores."""
    values, idx = torch.topk(I, k, dim=-1, sorted=False)
    return idx.masked_fill_(values == NEG_INF, -1)


def exactness(I: torch.Tensor, idx: torch.Tensor, k: int) -> dict:
    """Rows whose selected scores differ (as a sorted multiset) from torch.topk's; duplicate indices."""
    x = I.reshape(-1, I.shape[-1]).float()
    sel = idx.reshape(-1, k)
    got = torch.where(sel >= 0, x.gather(1, sel.clamp(min=0)), NEG_INF).sort(-1).values
    ref = torch.topk(x, k, dim=-1).values.sort(-1).values
    s = sel.sort(-1).values
    dups = ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(-1)
    minus_one_ok = ((sel < 0) == (torch.where(sel >= 0, x.gather(1, sel.clamp(min=0)), NEG_INF) == NEG_INF)).all()
    return dict(rows=x.shape[0], rows_differing=int((got != ref).any(-1).sum()), rows_with_duplicates=int(dups.sum()),
                minus_one_only_for_neg_inf=bool(minus_one_ok))


def candidate_stats(I: torch.Tensor, k: int) -> dict:
    """Candidates per row (scores >= the k-th largest strided group maximum), ignoring the kernel's
    truncation of that threshold to 16 key bits (which adds a few)."""
    x = I.reshape(-1, I.shape[-1]).float()
    S = x.shape[1]
    W = max(1 << (4 * k - 1).bit_length(), 256)
    cap = max(1 << (2 * k - 1).bit_length(), 256)
    pad = (-S) % W
    g = torch.nn.functional.pad(x, (0, pad), value=NEG_INF).view(x.shape[0], -1, W).amax(1)
    tau = torch.topk(g[:, :min(W, S)], k, dim=-1).values[:, -1:]
    n = (x >= tau).sum(-1).float()
    return dict(mean=n.mean().item(), max=n.max().item(), rows_over_cap=int((n > cap).sum()), cap=cap)


CONFIGS = [dict(), dict(groups=4096), dict(num_warps=4), dict(unroll=2), dict(unroll=1), dict(tile=4096),
           dict(tile=1024), dict(split=16), dict(split=4), dict(groups=4096, num_warps=4),
           dict(groups=4096, unroll=4, tile=4096)]


def measure(label: str, I: torch.Tensor, configs: list[dict], log: dict, k: int = TOP_K) -> dict:
    r = dict(label=label, shape=list(I.shape), dtype=str(I.dtype), candidates=candidate_stats(I, k))
    r["torch_ms"] = floors.graph_ms(lambda: torch_select(I, k))
    r["configs"] = []
    for cfg in configs:
        try:
            ms = floors.graph_ms(lambda: triton_topk.top_k(I, k, **cfg))
        except Exception as e:  # noqa: BLE001 - a tile that does not compile or fit is skipped
            r["configs"].append(dict(cfg, error=f"{type(e).__name__}: {str(e)[:160]}"))
            continue
        r["configs"].append(dict(cfg, ms=ms))
    ok = [c for c in r["configs"] if "ms" in c]
    best = min(ok, key=lambda c: c["ms"])
    cfg = {key: v for key, v in best.items() if key != "ms"}
    r["best"], r["triton_ms"] = cfg, best["ms"]
    r["exact"] = exactness(I, triton_topk.top_k(I, k, **cfg), k)
    r["steps_ms"] = {name: floors.graph_ms(lambda: triton_topk.top_k(I, k, stop=s, **cfg))
                     for s, name in ((2, "group_maxima_threshold"), (3, "plus_compaction"))}
    r["steps_ms"]["all"] = best["ms"]
    r["bytes_floor_ms"] = 1e3 * I.numel() * I.element_size() / log["copy_bw"]
    r["speedup"] = r["torch_ms"] / r["triton_ms"]
    print(f"{label} {tuple(I.shape)} {I.dtype}: torch {r['torch_ms']:.4f} ms, triton {r['triton_ms']:.4f} ms"
          f" (x{r['speedup']:.2f}, {cfg}), steps {r['steps_ms']}, floor {r['bytes_floor_ms']:.4f} ms,"
          f" exact {r['exact']}, candidates {r['candidates']}", flush=True)
    log["results"].append(r)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode-lengths", default="131072,8192")
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--prefill-length", type=int, default=131072)
    ap.add_argument("--quick", action="store_true", help="i.i.d. scores only: decode 64 x 128K and one causal "
                    "prefill block of 2048 x 128K, default tiles (no indexer, no sweep)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.time()
    n = 1 << 30
    src = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = floors.bench_ms(lambda: dst.copy_(src), 10)
    del src, dst
    log = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_bw=2 * n / (copy_ms * 1e-3),
               results=[])
    floors.INDEXER["scores"] = torch.bfloat16

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(log, indent=1, default=str))

    if args.quick:
        g = torch.Generator(device="cuda").manual_seed(5)
        measure("iid normal", torch.randn(64, 131072, device="cuda", generator=g).bfloat16(), [{}], log)
        x = torch.randn(2048, 131072, device="cuda", generator=g).bfloat16()
        pos = torch.arange(131072, device="cuda")
        x.masked_fill_(pos[None, :] > 131072 - 2048 + torch.arange(2048, device="cuda")[:, None], NEG_INF)
        measure("iid normal, causal prefill block", x, [{}], log)
        log["wall_s"] = time.time() - t0
        save()
        return
    best = None
    for L in (int(v) for v in args.decode_lengths.split(",")):
        x = floors.make_decode(args.decode_batch, L)
        I16 = floors.dsa_indexer(x["q_I"], x["w"], x["k_fp8"], x["k_scale"])
        cfg = measure(f"decode L={L}", I16, CONFIGS if best is None else [best], log)
        best = best or cfg
        floors.INDEXER["scores"] = torch.float32
        I32 = floors.dsa_indexer(x["q_I"], x["w"], x["k_fp8"], x["k_scale"])
        floors.INDEXER["scores"] = torch.bfloat16
        measure(f"decode L={L}", I32, [best, dict(best, num_warps=4)], log)
        save()
        del x, I16, I32
    g = torch.Generator(device="cuda").manual_seed(5)
    measure("iid normal", torch.randn(64, 131072, device="cuda", generator=g).bfloat16(), [best], log)
    # prefill blocks as dsa_gpu_floors runs them: 2048 queries, keys up to the block's last query
    L = args.prefill_length
    q_I = torch.randn(1, L, floors.H_I, floors.D_I, device="cuda", dtype=floors.DT, generator=g)
    w = torch.rand(1, L, floors.H_I, device="cuda", generator=g)
    k_fp8, ks = floors.kernels.quantize_fp8(torch.randn(1, L, floors.D_I, device="cuda", dtype=floors.DT,
                                                        generator=g))
    ks = ks.squeeze(-1).contiguous()
    chunk = max(256, min(L, (1 << 30) // (4 * L)))
    best = {key: v for key, v in best.items() if key != "split"}  # 2048 rows: one program a row
    for lo in sorted({L - chunk, L // 4 - chunk, chunk}):
        hi = lo + chunk
        I = floors.dsa_indexer(q_I[:, lo:hi], w[:, lo:hi], k_fp8[:, :hi], ks[:, :hi])
        measure(f"prefill block {lo}:{hi}", I, [best, dict(best, groups=4096), dict(best, num_warps=4),
                                               dict(best, unroll=1, tile=4096)], log)
        save()
    log["wall_s"] = time.time() - t0
    save()


if __name__ == "__main__":
    main()
