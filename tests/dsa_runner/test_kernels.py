"""DSA math: fast paths against the dense-with-mask reference; causality of the selection."""

import pytest
import torch

from dsa_runner import kernels, triton_kernels


def _inputs(B=2, T=5, S=9, H=4, H_kv=2, d=16, H_I=4, d_I=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return dict(query=r(B, H, T, d), key=r(B, H_kv, S, d), value=r(B, H_kv, S, d),
                q_I=r(B, T, H_I, d_I), w=r(B, T, H_I).abs(), k_I=r(B, S, d_I))


def test_selection_is_causal_and_respects_padding():
    x = _inputs(T=9, S=9)
    kv_start = torch.tensor([0, 3])
    allowed = kernels.causal_allowed(2, 9, 9, "cpu", kv_start)
    I = kernels.index_scores(x["q_I"], x["w"], x["k_I"], allowed)
    top_k = kernels.select_top_k(I, 4)
    pos = torch.arange(9)[None, :, None]
    chosen = top_k >= 0
    assert (top_k[chosen] <= pos.expand_as(top_k)[chosen]).all(), "a future token was selected"
    assert (top_k[1][chosen[1]] >= 3).all(), "a padding token was selected"
    # every query sees min(k, visible) keys
    assert chosen[0].sum(-1).tolist() == [min(4, t + 1) for t in range(9)]


def test_index_scores_match_definition():
    x = _inputs()
    allowed = kernels.causal_allowed(2, 5, 9, "cpu")
    I = kernels.index_scores(x["q_I"], x["w"], x["k_I"], allowed)
    ref = kernels.index_scores_reference(x["q_I"], x["w"], x["k_I"], allowed)
    torch.testing.assert_close(I, ref)


@pytest.mark.parametrize("impl", ["masked", "gather"])
def test_sparse_attention_paths_match_reference(impl):
    x = _inputs()
    allowed = kernels.causal_allowed(2, 5, 9, "cpu", torch.tensor([0, 2]))
    top_k = kernels.select_top_k(kernels.index_scores(x["q_I"], x["w"], x["k_I"], allowed), 3)
    ref = kernels.dsa_attention_reference(x["query"], x["key"], x["value"], top_k, 0.25)
    out = kernels.sparse_attention(x["query"], x["key"], x["value"], top_k, 0.25, impl=impl)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_full_selection_equals_dense():
    x = _inputs()
    allowed = kernels.causal_allowed(2, 5, 9, "cpu")
    top_k = kernels.select_top_k(kernels.index_scores(x["q_I"], x["w"], x["k_I"], allowed), 64)
    out = kernels.sparse_attention(x["query"], x["key"], x["value"], top_k, 0.25, impl="gather")
    dense = kernels.dense_attention(x["query"], x["key"], x["value"], allowed, 0.25)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)


needs_triton = pytest.mark.skipif(not triton_kernels.available("cpu"),
                                  reason="Triton kernels need CUDA or TRITON_INTERPRET=1")


@needs_triton
@pytest.mark.parametrize("H,H_kv,d,dv", [(4, 4, 32, 32), (6, 2, 32, 32), (32, 1, 48, 32)])
def test_triton_sparse_attention_matches_reference(H, H_kv, d, dv):
    g = torch.Generator().manual_seed(1)
    B, T, S = 2, 3, 40
    q, k = torch.randn(B, H, T, d, generator=g), torch.randn(B, H_kv, S, d, generator=g)
    v = k[..., :dv] if dv < d else torch.randn(B, H_kv, S, dv, generator=g)
    allowed = kernels.causal_allowed(B, T, S, "cpu", torch.tensor([0, 5]))
    I = torch.randn(B, T, S, generator=g).masked_fill(~allowed, float("-inf"))
    top_k = kernels.select_top_k(I, 24)
    ref = kernels.dsa_attention_reference(q, k, v, top_k, 0.2)
    out = triton_kernels.sparse_attention(q, k, v, top_k, 0.2)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


@needs_triton
@pytest.mark.parametrize("H,T", [(4, 5), (16, 1), (16, 7), (4, 70)])
def test_triton_index_scores_match_reference(H, T):
    g = torch.Generator().manual_seed(2)
    B, S, D = 2, 300, 16
    q_I, w, k_I = torch.randn(B, T, H, D, generator=g), torch.randn(B, T, H, generator=g), torch.randn(B, S, D, generator=g)
    kv_start = torch.tensor([0, 7])
    ref = kernels.index_scores_reference(q_I, w, k_I, kernels.causal_allowed(B, T, S, "cpu", kv_start))
    out = triton_kernels.index_scores(q_I, w, k_I, None, kv_start)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


@needs_triton
def test_triton_query_quantisation_matches_torch():
    g = torch.Generator().manual_seed(3)
    q_I, w = torch.randn(2, 3, 4, 16, generator=g), torch.rand(2, 3, 4, generator=g)
    q_fp8, w_eff = triton_kernels.quantize_queries_fp8(q_I, w)
    ref_q, ref_scale = kernels.quantize_fp8(q_I)
    torch.testing.assert_close(w_eff, w * ref_scale.squeeze(-1))
    # e4m3 keeps 3 mantissa bits (the Triton CPU interpreter's e4m3 rounding is cruder than the GPU's)
    dequant = q_fp8.float() * ref_scale
    assert ((dequant - q_I).norm() / q_I.norm()).item() < 0.1


def test_chunked_index_top_k_matches_full_selection():
    """The model's path (scores and top-k by query chunks, causal trimming) selects what the
    definition selects, ties included (many exact zeros with few index heads)."""
    x = _inputs(T=40, S=50, H_I=2)
    allowed = kernels.causal_allowed(2, 40, 50, "cpu", torch.tensor([0, 6]))
    full = kernels.select_top_k(kernels.index_scores_reference(x["q_I"], x["w"], x["k_I"], allowed), 7)
    chunked = kernels.index_top_k(x["q_I"], x["w"], x["k_I"], allowed, 7, max_elements=64)
    as_sets = lambda t: kernels.selection_mask(t, 50)  # noqa: E731
    assert torch.equal(as_sets(full), as_sets(chunked))


def test_ties_go_to_the_most_recent_key_whatever_the_row_length():
    I = torch.tensor([[[0.0, 0.0, 1.0, 0.0, -0.0, float("-inf")]]])
    assert sorted(kernels.select_top_k(I, 3)[0, 0].tolist()) == [2, 3, 4]
    assert sorted(kernels.select_top_k(I[..., :5], 3)[0, 0].tolist()) == [2, 3, 4]
    assert sorted(kernels.select_top_k(I[..., :4], 3)[0, 0].tolist()) == [1, 2, 3]
