"""The compact decode path (dsa_runner.fast_decode) against the transformers forward, in float32:
same logits (1e-4) and the same greedy tokens, for a left-padded batch, with the context below and
above DSA's top-k, directly and through the engine."""

import pytest
import torch

from dsa_runner.engine import Engine, GenerationRequest, SamplingParams, cache_layer_count, fresh_cache
from dsa_runner.fast_decode import CompactDecoder

PROMPTS = [[1, 504, 3458, 282, 260], [1, 1073, 314, 253, 1789, 28, 2683, 30, 421, 3062],
           [1, 19, 1112, 1823, 30, 2322, 314, 5046, 28, 357, 1012, 256, 2011, 13]]
STEPS = 18


@pytest.fixture(scope="module")
def model():
    """A model of its own: the compact decoder re-points the model's weights at fused tensors."""
    from dsa_runner.loading import load_dsa_model

    torch.manual_seed(0)
    m, tok, _ = load_dsa_model(top_k=8, index_heads=4, index_head_dim=32)
    return m, tok


def _prefill(m, ids, mask):
    cache = fresh_cache(cache_layer_count(m))
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = m(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
            logits_to_keep=1)
    return cache, out.logits[:, -1], pos[:, -1] + 1


def _decode_both(m, decoder):
    S = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (S - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.inference_mode():
        cache_hf, logits, pos = _prefill(m, ids, mask)
        cache_c, _, _ = _prefill(m, ids, mask)
        tok = logits.argmax(-1)
        tokens_hf, tokens_c, worst = [], [], 0.0
        for _ in range(STEPS):
            mask = torch.cat([mask, mask.new_ones(len(PROMPTS), 1)], dim=1)
            ref = m(input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None],
                    past_key_values=cache_hf, use_cache=True, logits_to_keep=1).logits[:, -1]
            got = decoder.step(tok, pos, mask, cache_c)
            assert got is not None
            worst = max(worst, (got - ref).abs().max().item())
            tokens_hf.append(ref.argmax(-1).tolist())
            tokens_c.append(got.argmax(-1).tolist())
            tok, pos = ref.argmax(-1), pos + 1
        # the caches (K/V and DSA index keys) hold the same columns
        for a, b in zip(cache_hf.layers, cache_c.layers):
            assert torch.allclose(a.keys, b.keys, atol=1e-4) and a.keys.shape == b.keys.shape
    return tokens_hf, tokens_c, worst


@pytest.mark.parametrize("top_k", [64, 8], ids=["context-below-top-k", "sparse-context-above-top-k"])
def test_compact_decode_matches_the_transformers_forward(model, top_k):
    m, _ = model
    saved = m.dsa_settings.top_k
    m.dsa_settings.top_k = top_k  # 8: every step (context 14..31) selects keys with the indexer
    try:
        tokens_hf, tokens_c, worst = _decode_both(m, CompactDecoder(m))
    finally:
        m.dsa_settings.top_k = saved
    assert tokens_c == tokens_hf
    assert worst < 1e-4, worst
    assert len({tuple(t) for t in tokens_hf}) > 1  # the batch really generated text, not one token


def _greedy_texts(m, tok, impl):
    engine = Engine(m, tok, max_batch=8, decode_impl=impl)
    assert engine.decode_impl == impl
    results = {}
    with torch.inference_mode():
        for i, prompt in enumerate(PROMPTS):
            params = SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True)

            def collect(events, i=i):
                for ev in events:
                    if hasattr(ev, "reason"):
                        results[i] = ev.text
            engine._waiting.append(GenerationRequest(prompt, 1, params, collect))
        engine.run_until_idle()
    return [results[i] for i in range(len(PROMPTS))]


def test_engine_compact_and_hf_give_the_same_greedy_texts(model):
    m, tok = model
    compact = _greedy_texts(m, tok, "compact")
    hf = _greedy_texts(m, tok, "hf")
    assert compact == hf
    assert all(len(t) > 0 for t in compact)


def test_unknown_decode_impl_is_refused(model):
    m, tok = model
    with pytest.raises(ValueError, match="decode_impl"):
        Engine(m, tok, decode_impl="fast")


def test_steps_it_does_not_cover_go_back_to_the_transformers_forward(model):
    """A DSA mode the compact loop does not implement (dense_indexed: recall evaluation) makes step()
    decline, leaving the cache untouched, and the engine then decodes through transformers."""
    m, tok = model
    decoder = CompactDecoder(m)
    ids = torch.tensor([PROMPTS[1]])
    mask = torch.ones_like(ids)
    saved = m.dsa_settings.mode
    m.dsa_settings.mode = "dense_indexed"
    try:
        with torch.inference_mode():
            cache, logits, pos = _prefill(m, ids, mask)
            before = [layer.keys.shape for layer in cache.layers]
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            assert decoder.step(logits.argmax(-1), pos, mask, cache) is None
            assert [layer.keys.shape for layer in cache.layers] == before
        texts = _greedy_texts(m, tok, "compact")
    finally:
        m.dsa_settings.mode = saved
    assert all(len(t) > 0 for t in texts)
