"""Indexer warm-up (DeepSeek-V3.2 report, section 2.1.1 "Continued Pre-Training").

Dense warm-up stage: the main model is frozen and keeps dense attention; only the lightning indexers
train. For each query token t the target is the main attention distribution summed over heads and
L1-normalised, p(t, :), and the loss is

    L_I = sum_t D_KL( p(t, :) || Softmax(I(t, :)) )

Sparse stage (optional): attention runs over the top-k selection S_t, and the KL is taken over the
selected tokens only, L_I = sum_t D_KL( p(t, S_t) || Softmax(I(t, S_t)) ), with p from the sparse
attention. The indexer input is detached, so the indexer loss never reaches the main model (which is
frozen here anyway; the report trains it with the LM loss in that stage).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsa_runner import kernels
from dsa_runner.attention import DSASettings, LayerRecord, install
from dsa_runner.indexer import ModelIndexers
from dsa_runner.kernels import NEG_INF


def token_windows(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """(N, seq_len) windows of one token stream (documents joined by EOS), without overlap."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        stream = (stream * math.ceil(seq_len / max(1, len(stream))))[:seq_len]
        n = 1
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def kl_to_indexer(p: torch.Tensor, I: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over query tokens of D_KL(p(t, .) || Softmax(I(t, .))) over the keys in ``keep``.
    p is renormalised over ``keep``. Queries with no kept key are skipped."""
    p = torch.where(keep, p, 0.0)
    mass = p.sum(-1, keepdim=True)
    rows = mass.squeeze(-1) > 0
    p = p / mass.clamp(min=1e-12)
    log_q = torch.log_softmax(I.masked_fill(~keep, NEG_INF), dim=-1)
    terms = torch.where(keep & (p > 0), p * (torch.log(p.clamp(min=1e-30)) - log_q), 0.0)
    return terms.sum(-1)[rows].mean() if rows.any() else I.sum() * 0.0


def sparse_attention_target(record: LayerRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """p over the selected keys only (sparse stage): head-summed attention restricted to S_t."""
    selected = kernels.selection_mask(record.top_k, record.key.shape[2]) & record.allowed
    p = kernels.dense_probs_head_sum(record.query, record.key, selected, record.scaling)
    return p, selected


@dataclass
class WarmupReport:
    steps: int
    stage: str
    losses: list[float] = field(default_factory=list)
    weights_path: str | None = None

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def last_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail) if tail else float("nan")


def _base_model(model):
    return getattr(model, model.base_model_prefix, model)


def warmup(model, tokenizer, texts: list[str], *, steps: int = 200, seq_len: int = 512, batch_size: int = 1,
           lr: float = 1e-3, stage: str = "dense", top_k: int | None = None, seed: int = 0,
           save_to: str | Path | None = None, progress: bool = True) -> WarmupReport:
    """Trains the indexers attached by ``load_dsa_model`` (model.dsa_indexers) on ``texts``.

    stage: "dense" (KL to dense attention over all keys) or "sparse" (KL over the top-k selection,
    attention sparse). top_k: selection size for the sparse stage (default: the model's).
    save_to: a ``.safetensors`` path or a folder (then ``dsa_indexer.safetensors`` inside it).
    """
    if stage not in ("dense", "sparse"):
        raise ValueError(f"stage must be 'dense' or 'sparse', not {stage!r}")
    indexers: ModelIndexers = model.dsa_indexers
    settings: DSASettings = model.dsa_settings
    saved = (settings.mode, settings.top_k, settings.recorder, settings.record_grad)
    device = next(model.parameters()).device
    windows = token_windows(tokenizer, texts, seq_len)
    model.requires_grad_(False)
    indexers.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(indexers.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    report = WarmupReport(steps=steps, stage=stage)
    layer_losses: list[torch.Tensor] = []

    def record(rec: LayerRecord) -> None:
        if stage == "dense":
            p = kernels.dense_probs_head_sum(rec.query, rec.key, rec.allowed, rec.scaling)
            keep = rec.allowed
        else:
            p, keep = sparse_attention_target(rec)
        layer_losses.append(kl_to_indexer(p, rec.I, keep))

    settings.mode = "dense_indexed" if stage == "dense" else "sparse"
    settings.top_k = top_k or settings.top_k
    settings.recorder, settings.record_grad = record, True
    bar = _progress(steps, f"indexer warm-up ({stage})", progress)
    try:
        for step in range(steps):
            rows = [rng.randrange(len(windows)) for _ in range(batch_size)]
            input_ids = windows[rows].to(device)
            layer_losses.clear()
            with torch.enable_grad():
                _base_model(model)(input_ids=input_ids, use_cache=False)
                loss = torch.stack(layer_losses).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            report.losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(kl=f"{loss.item():.4f}")
    finally:
        bar.close()
        settings.mode, settings.top_k, settings.recorder, settings.record_grad = saved
        indexers.requires_grad_(False).eval()
    if save_to is not None:
        cfg = indexers.cfg
        cfg.extra = {"warmup_steps": steps, "stage": stage, "seq_len": seq_len, "lr": lr,
                     "kl_first": report.first_loss, "kl_last": report.last_loss}
        report.weights_path = str(indexers.save(save_to))
    return report


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def reinstall(model, indexers: ModelIndexers) -> None:
    """Puts another set of indexers (e.g. untrained vs warmed-up) into the model."""
    indexers = indexers.to(next(model.parameters()).device, next(model.parameters()).dtype)
    model.dsa_indexers = indexers.eval().requires_grad_(False)
    install(model, indexers, model.dsa_settings)
