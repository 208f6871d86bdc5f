"""DSA's sparse prefill in C (dsa_runner/native_prefill.py): the same top-k selection as the torch path, the
same attention output within bfloat16 rounding, the same greedy tokens end to end, and DSA_NATIVE_PREFILL=0
keeping the torch path."""

import pytest
import torch

from dsa_runner import kernels, native_prefill

pytestmark = pytest.mark.model

if not native_prefill.enabled():
    pytest.skip("native DSA prefill unavailable here (no compiler or no AVX512-BF16)", allow_module_level=True)


def _inputs(seed, T, S, H, H_kv, d, H_I, d_I):
    g = torch.Generator().manual_seed(seed)
    bf = torch.bfloat16

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(bf)

    q, k, v = rand(1, H, T, d), rand(1, H_kv, S, d), rand(1, H_kv, S, d)
    q_I, w, k_I = rand(1, T, H_I, d_I), rand(1, T, H_I), rand(1, S, d_I)
    k_I[:, ::5] = 0  # index scores exactly 0 for every fifth key: exact ties at the top-k boundary
    return q, k, v, q_I, w, k_I


def _check_selection(q_I, w, k_I, top_k, selected):
    """Same sets as the torch selection; a row may differ only where the two keys it swaps score within
    float32 rounding of each other (the sums run in another order), and such rows are rare."""
    B, T, S = 1, q_I.shape[1], k_I.shape[1]
    allowed = kernels.causal_allowed(B, T, S, "cpu")
    reference = kernels.index_top_k(q_I, w, k_I, allowed, top_k)
    scores = kernels.index_scores(q_I, w, k_I, allowed)
    differing = 0
    for t in range(T):
        ours = {i for i in selected[0, t].tolist() if i >= 0}
        theirs = {i for i in reference[0, t].tolist() if i >= 0}
        assert len(ours) == len(theirs) == min(top_k, S - T + t + 1)
        if ours != theirs:
            differing += 1
            swapped = scores[0, t, sorted(ours ^ theirs)]
            assert (swapped.max() - swapped.min()).abs() <= 1e-5 * scores[0, t].abs().max(), (t, swapped)
    assert differing <= max(1, T // 100), differing
    return reference


@pytest.mark.parametrize("T, S, top_k, heads, d, index", [
    (96, 96, 32, (9, 3), 64, (4, 32)),      # SmolLM2's attention shape, a whole prompt
    (64, 300, 128, (9, 3), 64, (4, 32)),    # a later chunk: queries at the end of the keys
    (40, 200, 50, (4, 2), 32, (8, 64)),     # another group size, head dim and indexer shape
    (1, 257, 64, (9, 3), 64, (4, 32)),      # one decode step
    (37, 1000, 300, (9, 3), 64, (4, 32)),   # blocks of 16 queries and a partial one
    (20, 400, 100, (6, 2), 64, (4, 64)),    # index heads of 64 dims
])
@pytest.mark.parametrize("amx", ["1", "0"])
def test_same_selection_and_output_as_the_torch_path(T, S, top_k, heads, d, index, amx, monkeypatch):
    """With AMX (blocks of 16 queries over the union of their selections, head dim 64) and without (per query)."""
    monkeypatch.setenv("DSA_NATIVE_PREFILL_AMX", amx)
    H, H_kv = heads
    q, k, v, q_I, w, k_I = _inputs(T + S, T, S, H, H_kv, d, *index)
    out, selected = native_prefill.sparse_prefill(q, k, v, q_I, w, k_I, top_k, d ** -0.5, threads=2,
                                                  return_selection=True)
    reference = _check_selection(q_I, w, k_I, top_k, selected)
    expected = kernels.dsa_attention_reference(q.float(), k.float(), v.float(), reference, d ** -0.5)
    assert out.shape == expected.shape and out.dtype == torch.bfloat16
    # bfloat16 output and probabilities: within a few bfloat16 steps of the float32 reference
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    gather = kernels.sparse_attention(q, k, v, reference, d ** -0.5, impl="gather")
    assert (out.float() - expected).abs().mean() <= 1.5 * (gather.float() - expected).abs().mean() + 1e-4


def test_ties_go_to_the_most_recent_keys():
    T, S, top_k = 8, 100, 16
    q, k, v, q_I, w, k_I = _inputs(1, T, S, 9, 3, 64, 4, 32)
    k_I.zero_()  # every score is 0: the selection is the latest top_k keys each query sees
    _, selected = native_prefill.sparse_prefill(q, k, v, q_I, w, k_I, top_k, 0.125, return_selection=True)
    for t in range(T):
        last = S - T + t
        assert sorted(selected[0, t].tolist()) == list(range(last - top_k + 1, last + 1))


@pytest.fixture(scope="module")
def bf16_dsa():
    """The default model in bfloat16 with its shipped (trained) indexers and a small top-k."""
    from dsa_runner.loading import default_model_path, load_dsa_model, model_hash, shipped_indexer_path

    with pytest.MonkeyPatch.context() as mp:  # conftest hides the shipped folder from the other tests
        mp.delenv("DSA_RUNNER_SHIPPED_INDEXERS", raising=False)
        path = shipped_indexer_path(model_hash(default_model_path()))
    if not path.is_file():
        pytest.skip("no shipped indexers for the default model")
    model, tokenizer, _ = load_dsa_model(top_k=48, indexer_weights=path, dtype=torch.bfloat16)
    return model, tokenizer


def _greedy(model, tokenizer, text: str, chunk: int, new_tokens: int):
    """Prefill in chunks (as the engine does), then greedy decoding; returns (tokens, prefill logits)."""
    from dsa_runner.kv_cache import fresh_cache

    ids = tokenizer(text, return_tensors="pt").input_ids
    cache = fresh_cache(2 * model.config.num_hidden_layers)
    with torch.inference_mode():
        for lo in range(0, ids.shape[1], chunk):
            hi = min(ids.shape[1], lo + chunk)
            out = model(input_ids=ids[:, lo:hi], attention_mask=torch.ones(1, hi, dtype=torch.long),
                        position_ids=torch.arange(lo, hi)[None], past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
        first = out.logits[0, -1].float()
        tokens, pos = [], ids.shape[1]
        for _ in range(new_tokens):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = model(input_ids=torch.tensor([[tokens[-1]]]), attention_mask=torch.ones(1, pos + 1, dtype=torch.long),
                        position_ids=torch.tensor([[pos]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
            pos += 1
    return tokens, first


TEXT = " ".join(f"Entry {i}: the miller of Oakridge sold {i * 7 % 13} sacks of barley to the smith." for i in range(12))


def test_same_greedy_tokens_as_the_torch_path(bf16_dsa, monkeypatch):
    model, tokenizer = bf16_dsa
    calls = []
    real = native_prefill.sparse_prefill
    monkeypatch.setattr(native_prefill, "sparse_prefill", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    native_tokens, native_logits = _greedy(model, tokenizer, TEXT, 64, 8)
    assert calls, "the C path did not run"
    monkeypatch.setenv("DSA_NATIVE_PREFILL", "0")
    calls.clear()
    torch_tokens, torch_logits = _greedy(model, tokenizer, TEXT, 64, 8)
    assert not calls  # the switch keeps the torch path
    assert native_tokens == torch_tokens
    assert (native_logits - torch_logits).abs().max() < 0.05 * torch_logits.abs().max()
