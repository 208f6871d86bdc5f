"""One layer's attention plus indexer on the CPU: DSA's sparse path against dense attention, same length.

    python bench/dsa_cpu_layer.py                       # 7.5K tokens, 2 threads, top-k 2048
    python bench/dsa_cpu_layer.py --lengths 4096,7680 --threads 1 --torch

SmolLM2-135M's attention shape (9 query heads over 3 KV heads of 64 dims) and the shipped indexers' shape
(4 heads x 32 dims), bfloat16. Inputs: random (``--inputs random``, the default: neighbouring queries select
unrelated keys, the worst case for the C path, which runs blocks of 16 queries over the union of their
selections), or one layer's real queries, keys, values and index tensors (``--inputs real``: the default
model with its shipped indexers on the shipped corpus, layer ``--layer``; one dense forward of L tokens
first, which takes a while). A prompt of L tokens in chunks of 512, as the engine prefills. The indexer's
projections (a few small linears per token) are left out of both sides.

* dense, causal SDPA: ``scaled_dot_product_attention(is_causal=True)`` over all L queries in one call
  (torch's flash kernel, oneDNN with AMX where the CPU has it): the strongest dense option in torch here.
* dense, chunked SDPA: what the engine runs per chunk of 512 (SDPA with a boolean causal mask).
* DSA, C: index scores, top-k and attention per query row (``native_prefill.sparse_prefill``).
* DSA, torch (``--torch``, slow): ``kernels.index_top_k`` then ``kernels.sparse_attention``.

Variants run interleaved, ``--repeats`` times; each one's fastest wall time counts, with its CPU time
(process time, all threads). Target: DSA >= 1.5x faster than the faster dense variant at 7.5K.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dsa_runner import kernels, native_prefill  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, INDEX_HEADS, INDEX_DIM = 9, 3, 64, 4, 32
CHUNK = 512


def cpu_description() -> str:
    from bench.runner_agent import cpu_description as describe

    return describe()


def inputs(L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    return (rand(1, HEADS, L, HEAD_DIM), rand(1, KV_HEADS, L, HEAD_DIM), rand(1, KV_HEADS, L, HEAD_DIM),
            rand(1, L, INDEX_HEADS, INDEX_DIM), rand(1, L, INDEX_HEADS), rand(1, L, INDEX_DIM))


def real_inputs(L: int, layer_idx: int):
    """One layer's (query, key, value, q_I, w, k_I) for the first L tokens of the shipped corpus, from the
    default model in bfloat16 with its shipped indexers (a dense forward; the index tensors from the layer's
    indexer on the hidden states the attention module received)."""
    from transformers import AttentionInterface

    from dsa_runner.attention import ATTN_NAME, attention_modules, dsa_attention_forward
    from dsa_runner.corpus import read_texts
    from dsa_runner.loading import default_model_path, load_dsa_model, model_hash, shipped_indexer_path

    os.environ.pop("DSA_RUNNER_SHIPPED_INDEXERS", None)
    path = shipped_indexer_path(model_hash(default_model_path()))
    model, tokenizer, _ = load_dsa_model(top_k=2048, indexer_weights=path, dtype=torch.bfloat16)
    ids = tokenizer("\n\n".join(read_texts()), return_tensors="pt").input_ids[:, :L]
    if ids.shape[1] < L:
        raise SystemExit(f"the shipped corpus has only {ids.shape[1]} tokens")
    module = attention_modules(model)[layer_idx]
    got = {}

    def keep_hidden(mod, args, kwargs):
        got["hidden"] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach()

    def keep_qkv(mod, query, key, value, *args, **kwargs):
        if mod is module:
            got["qkv"] = (query.contiguous(), key.contiguous(), value.contiguous())
        return dsa_attention_forward(mod, query, key, value, *args, **kwargs)

    handle = module.register_forward_pre_hook(keep_hidden, with_kwargs=True)
    AttentionInterface.register(ATTN_NAME, keep_qkv)
    model.dsa_settings.mode = "dense"
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            indexer = model.dsa_indexers.layers[layer_idx]
            q_I, w, k_I = indexer(got["hidden"].to(indexer.k_norm.weight.dtype), torch.arange(L)[None])
    finally:
        handle.remove()
        AttentionInterface.register(ATTN_NAME, dsa_attention_forward)
    bf = torch.bfloat16
    return (*got["qkv"], q_I.to(bf).contiguous(), w.to(bf).contiguous(), k_I.to(bf).contiguous())


def variants(L: int, top_k: int, with_torch: bool, real_layer: int | None):
    q, k, v, q_I, w, k_I = inputs(L) if real_layer is None else real_inputs(L, real_layer)
    scaling = HEAD_DIM ** -0.5
    chunks = [(lo, min(L, lo + CHUNK)) for lo in range(0, L, CHUNK)]

    def dense_causal():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)

    masks = {hi: kernels.causal_allowed(1, hi - lo, hi, "cpu")[:, None] for lo, hi in chunks}

    def dense_chunked():
        for lo, hi in chunks:
            F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], attn_mask=masks[hi],
                                           scale=scaling, enable_gqa=True)

    def dsa_c():
        for lo, hi in chunks:
            native_prefill.sparse_prefill(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], q_I[:, lo:hi], w[:, lo:hi],
                                          k_I[:, :hi], top_k, scaling)

    def dsa_torch():
        for lo, hi in chunks:
            if hi <= top_k:
                F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], attn_mask=masks[hi],
                                               scale=scaling, enable_gqa=True)
                continue
            allowed = kernels.causal_allowed(1, hi - lo, hi, "cpu")
            selected = kernels.index_top_k(q_I[:, lo:hi], w[:, lo:hi], k_I[:, :hi], allowed, top_k)
            kernels.sparse_attention(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], selected, scaling)

    found = {"dense, causal SDPA": dense_causal, "dense, chunked SDPA": dense_chunked, "DSA, C": dsa_c}
    if with_torch:
        found["DSA, torch"] = dsa_torch
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="7680", help="prompt lengths, comma-separated (default 7680)")
    parser.add_argument("--threads", type=int, default=2, help="torch's and the C path's threads (default 2)")
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also the torch DSA path (slow)")
    parser.add_argument("--inputs", choices=["random", "real"], default="random")
    parser.add_argument("--layer", type=int, default=15, help="the layer whose inputs --inputs real takes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {args.threads} threads, top-k {args.top_k}, native C path "
          f"{'on' if native_prefill.enabled() else 'UNAVAILABLE'}; load average {os.getloadavg()[0]:.2f}")
    for L in (int(x) for x in args.lengths.split(",")):
        found = variants(L, args.top_k, args.torch, args.layer if args.inputs == "real" else None)
        best = {name: (float("inf"), 0.0) for name in found}
        with torch.inference_mode():
            for name, fn in found.items():
                fn()  # warm: oneDNN primitives, the C library
            for _ in range(args.repeats):
                for name, fn in found.items():
                    cpu, wall = time.process_time(), time.perf_counter()
                    fn()
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    if wall < best[name][0]:
                        best[name] = (wall, cpu)
        dense = min(best["dense, causal SDPA"][0], best["dense, chunked SDPA"][0])
        print(f"\nL = {L}, {args.inputs} inputs{f' (layer {args.layer})' if args.inputs == 'real' else ''}: one "
              f"layer's attention (+ indexer for DSA), fastest of {args.repeats} "
              f"(load average {os.getloadavg()[0]:.2f})")
        for name, (wall, cpu) in best.items():
            print(f"  {name:20s} {wall * 1e3:8.1f} ms wall, {cpu * 1e3:8.1f} ms CPU; dense (faster) / this "
                  f"{dense / wall:5.2f}x")
        ratio = dense / best["DSA, C"][0]
        print(f"  DSA (C) vs the faster dense: {ratio:.2f}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
