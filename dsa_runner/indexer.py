"""The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2 report, section 2.1).

For a query token t and a preceding token s the index score is

    I(t, s) = sum_{j=1..H_I} w(t, j) * ReLU(q(t, j) . k(s))

with H_I index heads. q(t, j) and w(t, j) come from the query token's hidden state, k(s) from the
key token's hidden state; there is one index key per token shared by all index heads (MQA), which is
what makes the indexer cheap and lets it run in FP8. As in DeepSeek-V3.2's code, the index key goes
through a LayerNorm, RoPE is applied to the first ``rope_dim`` dimensions of q and k, and w is scaled
by H_I^-1/2 * d_I^-1/2.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dsa_runner.errors import IndexerWeightsMismatch

DEFAULT_TOP_K = 2048


@dataclass
class IndexerConfig:
    """Shape of the indexers of one model; stored as JSON beside the indexer weights."""

    hidden_size: int
    num_layers: int
    index_heads: int = 8  # H_I
    index_head_dim: int = 64  # d_I
    rope_dim: int = 32  # leading dims of each index head that get rotary position embedding
    rope_theta: float = 10000.0
    top_k: int = DEFAULT_TOP_K
    model_name: str = ""
    model_hash: str = ""  # loading.model_hash of the model the indexers belong to ("" in older files)
    extra: dict = field(default_factory=dict)  # e.g. warm-up statistics

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "IndexerConfig":
        return cls(**json.loads(text))

    def check_compatible(self, other: "IndexerConfig") -> None:
        """Same indexer shape (``other``: a file's config; ``self``: what the caller expects). Whether the
        indexers belong to the model is ``loading.check_indexers_fit``."""
        for name in ("hidden_size", "num_layers", "index_heads", "index_head_dim", "rope_dim"):
            if getattr(self, name) != getattr(other, name):
                raise IndexerWeightsMismatch(
                    f"indexer weights have {name}={getattr(other, name)}, model expects {getattr(self, name)}")


_INV_FREQ: dict = {}


def rope_tables(positions: torch.Tensor, rope_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (B, T, rope_dim / 2) float32, for positions (B, T). The same for every layer of
    one forward: the DSA pre-hook computes them once per forward and hands them to each indexer."""
    half = rope_dim // 2
    key = (half, theta, positions.device)
    inv_freq = _INV_FREQ.get(key)
    if inv_freq is None:  # once per (shape, device): not a few small ops per layer per step
        inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32) / half))
        inv_freq = _INV_FREQ[key] = inv_freq.to(positions.device)
    angles = positions.float()[..., None] * inv_freq  # (B, T, half)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, positions: torch.Tensor, rope_dim: int, theta: float,
            tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """RoPE (rotate-half convention) on the first rope_dim dims of the last axis.
    x (B, T, ..., d), positions (B, T); ``tables``: rope_tables(positions, ...) when already computed."""
    if rope_dim == 0:
        return x
    half = rope_dim // 2
    cos, sin = tables if tables is not None else rope_tables(positions, rope_dim, theta)
    for _ in range(x.dim() - cos.dim()):
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x_rope, x_pass = x[..., :rope_dim].float(), x[..., rope_dim:]
    x1, x2 = x_rope[..., :half], x_rope[..., half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, x_pass], dim=-1)


class LightningIndexer(nn.Module):
    """One layer's indexer: hidden states -> (index queries q, weights w, index keys k)."""

    def __init__(self, cfg: IndexerConfig):
        super().__init__()
        self.cfg = cfg
        H, d = cfg.index_heads, cfg.index_head_dim
        self.wq = nn.Linear(cfg.hidden_size, H * d, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, d, bias=False)
        self.k_norm = nn.LayerNorm(d)
        self.weights_proj = nn.Linear(cfg.hidden_size, H, bias=False)
        self.w_scale = (H ** -0.5) * (d ** -0.5)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, *,
                tables: tuple[torch.Tensor, torch.Tensor] | None = None, keys_only: bool = False):
        """hidden (B, T, hidden), positions (B, T) -> q_I (B, T, H_I, d_I), w (B, T, H_I), k_I (B, T, d_I).

        ``keys_only``: q_I and w are None (a step where top-k covers every visible key needs only the
        index keys, for the cache). ``tables``: precomputed rope_tables(positions, ...)."""
        B, T, _ = hidden.shape
        cfg = self.cfg
        if tables is None:
            tables = rope_tables(positions, cfg.rope_dim, cfg.rope_theta) if cfg.rope_dim else None
        k_I = _rotate(self.k_norm(self.wk(hidden)), positions, cfg.rope_dim, cfg.rope_theta, tables)
        if keys_only:
            return None, None, k_I
        q_I = self.wq(hidden).view(B, T, cfg.index_heads, cfg.index_head_dim)
        q_I = _rotate(q_I, positions, cfg.rope_dim, cfg.rope_theta, tables)
        w = self.weights_proj(hidden) * self.w_scale
        return q_I, w, k_I


class ModelIndexers(nn.Module):
    """All layers' indexers of one model, with save/load as safetensors + JSON config."""

    WEIGHTS_NAME = "dsa_indexer.safetensors"

    def __init__(self, cfg: IndexerConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # untrained indexers are reproducible
        self.layers = nn.ModuleList(LightningIndexer(cfg) for _ in range(cfg.num_layers))
        torch.random.set_rng_state(generator_state)

    def save(self, path: str | Path) -> Path:
        """Writes <path> (safetensors, config in its metadata) and <path>.json (the config, readable)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / self.WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"dsa_indexer_config": self.cfg.to_json()})
        path.with_suffix(".json").write_text(self.cfg.to_json())
        return path

    @staticmethod
    def read_config(path: str | Path) -> IndexerConfig:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "dsa_indexer_config" in meta:
            return IndexerConfig.from_json(meta["dsa_indexer_config"])
        return IndexerConfig.from_json(Path(path).with_suffix(".json").read_text())

    @classmethod
    def load(cls, path: str | Path, expected: IndexerConfig | None = None) -> "ModelIndexers":
        from safetensors.torch import load_file

        cfg = cls.read_config(path)
        if expected is not None:
            expected.check_compatible(cfg)
        indexers = cls(cfg)
        indexers.load_state_dict(load_file(str(path)))
        return indexers
