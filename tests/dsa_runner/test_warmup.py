"""Dense warm-up lowers the indexer's KL to the dense attention on held-out text and raises top-k
recall; the weights it saves load back into the model (also through load_dsa_model)."""

import pytest
import torch

from dsa_runner.corpus import read_texts, split_held_out
from dsa_runner.evaluation import evaluate_indexers
from dsa_runner.indexer import IndexerConfig, ModelIndexers
from dsa_runner.warmup import warmup

pytestmark = pytest.mark.model


def test_warmup_lowers_held_out_kl_and_raises_recall(dsa, tmp_path):
    model, tokenizer, _ = dsa
    train, held = split_held_out(read_texts())
    before = evaluate_indexers(model, tokenizer, held, ks=[8], seq_len=64, max_windows=1, perplexity=False)
    report = warmup(model, tokenizer, train, steps=6, seq_len=64, lr=1e-2, save_to=tmp_path, progress=False)
    after = evaluate_indexers(model, tokenizer, held, ks=[8], seq_len=64, max_windows=1, perplexity=False)
    assert after.mean_kl < 0.7 * before.mean_kl, (before.mean_kl, after.mean_kl)
    assert after.mean_recall(8) > before.mean_recall(8) + 0.1, (before.mean_recall(8), after.mean_recall(8))
    # the saved file holds what was trained
    saved = ModelIndexers.load(report.weights_path)
    for name, tensor in model.dsa_indexers.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor.float())
    assert saved.cfg.extra["warmup_steps"] == 6
    # the optional sparse stage: KL over the selected keys only, attention sparse
    sparse = warmup(model, tokenizer, train, steps=2, seq_len=64, lr=1e-3, stage="sparse", top_k=8, progress=False)
    assert all(0.0 <= loss < 10.0 for loss in sparse.losses)


def test_indexer_weights_round_trip(tmp_path):
    cfg = IndexerConfig(hidden_size=32, num_layers=2, index_heads=4, index_head_dim=16, rope_dim=8, top_k=64)
    indexers = ModelIndexers(cfg, seed=3)
    path = indexers.save(tmp_path / "idx.safetensors")
    assert path.with_suffix(".json").exists()
    loaded = ModelIndexers.load(path, expected=cfg)
    assert loaded.cfg == cfg
    for name, tensor in indexers.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_mismatched_indexer_weights_are_refused(tmp_path):
    from dsa_runner.errors import IndexerWeightsMismatch

    cfg = IndexerConfig(hidden_size=32, num_layers=2, index_heads=4, index_head_dim=16)
    path = ModelIndexers(cfg).save(tmp_path)
    with pytest.raises(IndexerWeightsMismatch):
        ModelIndexers.load(path, expected=IndexerConfig(hidden_size=64, num_layers=2, index_heads=4, index_head_dim=16))


def test_load_dsa_model_accepts_warmed_up_weights(smollm, tmp_path):
    """The server's path: load_dsa_model(indexer_weights=...) with a file written by warm-up."""
    from dsa_runner import loading

    model, _, _ = smollm
    old_indexers, old_settings = model.dsa_indexers, model.dsa_settings
    cfg = old_indexers.cfg
    trained = ModelIndexers(cfg, seed=11)
    path = trained.save(tmp_path / "w.safetensors")
    # reuse the already loaded transformers model instead of a second 15 s GGUF load
    original = loading._load_transformers_model
    loading._load_transformers_model = lambda *a, **k: (model, smollm[1])
    try:
        same, _, info = loading.load_dsa_model(indexer_weights=path, top_k=8)
        loaded_wq = same.dsa_indexers.layers[0].wq.weight.clone()
        assert same.config._attn_implementation == "dsa"
    finally:
        loading._load_transformers_model = original
        model.dsa_indexers, model.dsa_settings = old_indexers, old_settings
        loading.install(model, old_indexers, old_settings)
    assert info.indexer_weights == str(path) and info.index_heads == cfg.index_heads
    torch.testing.assert_close(loaded_wq, trained.layers[0].wq.weight)


def _reusing_loaded_model(smollm):
    """load_dsa_model on the session's transformers model instead of a second GGUF load; restores it after."""
    import contextlib

    from dsa_runner import loading

    @contextlib.contextmanager
    def patched():
        model = smollm[0]
        old_indexers, old_settings = model.dsa_indexers, model.dsa_settings
        original = loading._load_transformers_model
        loading._load_transformers_model = lambda *a, **k: (model, smollm[1])
        try:
            yield loading
        finally:
            loading._load_transformers_model = original
            model.dsa_indexers, model.dsa_settings = old_indexers, old_settings
            loading.install(model, old_indexers, old_settings)
    return patched()


def test_another_models_indexer_weights_are_refused_at_load(smollm, tmp_path):
    """Checked against the model (not the file against itself): its layers, and the hash warm-up recorded."""
    from dataclasses import replace

    from dsa_runner.errors import IndexerWeightsMismatch

    cfg = smollm[0].dsa_indexers.cfg
    other_model = ModelIndexers(replace(cfg, model_name="OtherModel", model_hash="00ff00ff00ff00ff")).save(
        tmp_path / "other.safetensors")
    fewer_layers = ModelIndexers(replace(cfg, num_layers=2, model_hash="")).save(tmp_path / "small.safetensors")
    with _reusing_loaded_model(smollm) as loading:
        with pytest.raises(IndexerWeightsMismatch, match="trained for model OtherModel"):
            loading.load_dsa_model(indexer_weights=other_model, top_k=8)
        with pytest.raises(IndexerWeightsMismatch, match="layers 2"):
            loading.load_dsa_model(indexer_weights=fewer_layers, top_k=8)


def test_serve_finds_warmed_up_indexers_in_the_cache_else_runs_dense(smollm):
    """`runner warmup` writes to the user's cache by model hash; serve's plan finds them there, and
    without them serves dense attention with a line saying so."""
    from dsa_runner.loading import default_model_path, indexer_cache_path, model_hash
    from dsa_runner.options import ServerConfig
    from dsa_runner.server import attention_plan

    cached = indexer_cache_path(model_hash(default_model_path()))
    assert not cached.exists()  # the tests' own empty cache (conftest)
    dense, why = attention_plan(ServerConfig())
    assert dense and "DSA off" in why and "runner warmup" in why
    assert attention_plan(ServerConfig(untrained_indexers=True)) == (False, None)

    ModelIndexers(smollm[0].dsa_indexers.cfg).save(cached)
    try:
        assert attention_plan(ServerConfig()) == (False, None)
        with _reusing_loaded_model(smollm) as loading:
            _, _, info = loading.load_dsa_model(top_k=8)
        assert info.indexer_weights == str(cached) and info.indexers == "trained"
    finally:
        cached.unlink()
        cached.with_suffix(".json").unlink()


def test_warmup_leaves_the_main_model_bit_identical(dsa):
    import hashlib

    model, tokenizer, _ = dsa

    def fingerprints() -> dict[str, str]:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        return {name: hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
                for name, t in tensors.items() if not name.startswith("dsa_indexers.")}

    before = fingerprints()
    indexer_before = model.dsa_indexers.layers[0].wq.weight.clone()
    train, _ = split_held_out(read_texts())
    warmup(model, tokenizer, train, steps=2, seq_len=32, lr=1e-2, progress=False)
    assert fingerprints() == before and len(before) > 100
    assert not torch.equal(model.dsa_indexers.layers[0].wq.weight, indexer_before)  # the indexers did train
