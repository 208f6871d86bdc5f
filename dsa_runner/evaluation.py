"""Indexer quality report: how much of the dense attention the top-k selection keeps, and what DSA
costs in perplexity.

recall@k (per layer): for each query token with more than k visible keys, the share of its dense
attention mass p(t, :) (head-summed, L1-normalised, as in warm-up) that falls on the k keys the
indexer selects; averaged over those tokens. (Tokens with at most k visible keys select everything:
their recall is 1 by construction and they are left out.)
perplexity: next-token perplexity of the held-out windows with dense attention and with DSA at k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dsa_runner import kernels
from dsa_runner.attention import LayerRecord
from dsa_runner.warmup import kl_to_indexer, token_windows


@dataclass
class IndexerQuality:
    label: str  # e.g. "untrained" or the weights path
    ks: list[int]
    recall: dict[int, list[float]] = field(default_factory=dict)  # k -> per-layer recall
    kl: list[float] = field(default_factory=list)  # per layer, dense KL(p || softmax(I))
    ppl_dense: float = float("nan")
    ppl_dsa: dict[int, float] = field(default_factory=dict)

    def mean_recall(self, k: int) -> float:
        values = self.recall.get(k, [])
        return sum(values) / len(values) if values else float("nan")

    @property
    def mean_kl(self) -> float:
        return sum(self.kl) / len(self.kl) if self.kl else float("nan")


def _perplexity(model, windows: torch.Tensor, device) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in windows:
            ids = row[None].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return math.exp(nll / max(1, count))


def evaluate_indexers(model, tokenizer, texts: list[str], *, ks: list[int], seq_len: int = 512,
                      max_windows: int = 4, label: str = "", perplexity: bool = True) -> IndexerQuality:
    """Recall@k per layer, dense KL per layer and perplexity (dense vs DSA at each k)."""
    settings = model.dsa_settings
    saved = (settings.mode, settings.top_k, settings.recorder, settings.record_grad)
    device = next(model.parameters()).device
    windows = token_windows(tokenizer, texts, seq_len)[:max_windows]
    n_layers = model.dsa_indexers.cfg.num_layers
    sums = {k: [0.0] * n_layers for k in ks}
    counts = {k: [0] * n_layers for k in ks}
    kl_sum, kl_n = [0.0] * n_layers, [0] * n_layers

    def record(rec: LayerRecord) -> None:
        p = kernels.dense_probs_head_sum(rec.query, rec.key, rec.allowed, rec.scaling)
        kl_sum[rec.layer_idx] += kl_to_indexer(p, rec.I, rec.allowed).item()
        kl_n[rec.layer_idx] += 1
        visible = rec.allowed.sum(-1)  # (B, T)
        for k in ks:
            rows = visible > k
            if not rows.any():
                continue
            chosen = kernels.selection_mask(kernels.select_top_k(rec.I, k), rec.I.shape[-1])
            captured = (p * chosen).sum(-1)[rows]
            sums[k][rec.layer_idx] += captured.sum().item()
            counts[k][rec.layer_idx] += int(rows.sum())

    quality = IndexerQuality(label=label, ks=list(ks))
    try:
        settings.mode, settings.recorder, settings.record_grad = "dense_indexed", record, False
        with torch.no_grad():
            for row in windows:
                model(input_ids=row[None].to(device), use_cache=False)
        quality.recall = {k: [s / c if c else 1.0 for s, c in zip(sums[k], counts[k])] for k in ks}
        quality.kl = [s / max(1, n) for s, n in zip(kl_sum, kl_n)]
        settings.recorder = None
        if perplexity:
            settings.mode = "dense"
            quality.ppl_dense = _perplexity(model, windows, device)
            settings.mode = "sparse"
            for k in ks:
                settings.top_k = k
                quality.ppl_dsa[k] = _perplexity(model, windows, device)
    finally:
        settings.mode, settings.top_k, settings.recorder, settings.record_grad = saved
    return quality
