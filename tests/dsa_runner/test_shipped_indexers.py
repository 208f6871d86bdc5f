"""The default model's trained indexers ship with the package: `serve` finds them by the model's hash (so it
runs DSA, not dense), another model never gets them, and their selection keeps perplexity close to dense
attention where untrained indexers wreck it."""

import math

import pytest
import torch

from dsa_runner.corpus import read_texts, split_held_out
from dsa_runner.indexer import ModelIndexers
from dsa_runner.warmup import reinstall, token_windows

pytestmark = pytest.mark.model


@pytest.fixture
def shipped_visible(monkeypatch):
    """The package's own folder of shipped indexers (conftest hides it from the other tests)."""
    monkeypatch.delenv("DSA_RUNNER_SHIPPED_INDEXERS", raising=False)


def test_serve_finds_the_shipped_indexers_of_the_default_model_only(shipped_visible):
    from dsa_runner.loading import default_model_path, find_indexer_weights, model_hash, shipped_indexer_path
    from dsa_runner.options import ServerConfig
    from dsa_runner.server import attention_plan

    hash_ = model_hash(default_model_path())
    found = find_indexer_weights(default_model_path())
    assert found == shipped_indexer_path(hash_) and found.is_file()
    cfg = ModelIndexers.read_config(found)
    assert cfg.model_hash == hash_ and (cfg.hidden_size, cfg.num_layers) == (576, 30)
    assert attention_plan(ServerConfig()) == (False, None)  # DSA, with no "DSA off" line
    assert find_indexer_weights(default_model_path(), "00ff00ff00ff00ff") is None  # another model's hash


def _perplexity(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


def test_shipped_indexers_keep_perplexity_near_dense_where_untrained_ones_do_not(dsa, shipped_visible):
    from dsa_runner.loading import default_model_path, find_indexer_weights

    model, tokenizer, _ = dsa
    settings = model.dsa_settings
    _, held = split_held_out(read_texts())
    ids = token_windows(tokenizer, held, 512)[:1]
    settings.mode = "dense"
    dense = _perplexity(model, ids)
    settings.mode, settings.top_k = "sparse", 64  # 64 of up to 512 keys: the selection decides
    shipped = ModelIndexers.load(find_indexer_weights(default_model_path()))
    untrained = ModelIndexers(shipped.cfg)
    reinstall(model, shipped)
    trained_ppl = _perplexity(model, ids)
    reinstall(model, untrained)
    untrained_ppl = _perplexity(model, ids)
    print(f"perplexity dense {dense:.3f}, shipped {trained_ppl:.3f}, untrained {untrained_ppl:.3f}")
    assert trained_ppl < 1.3 * dense, (dense, trained_ppl)
    assert untrained_ppl > 2 * trained_ppl, (trained_ppl, untrained_ppl)
