"""MLA in MQA mode: the PyTorch reference (runs on CPU in CI) and the Triton kernel (CUDA, or
TRITON_INTERPRET=1) against it, dense decode split over key ranges and DSA's gathered rows."""

import pytest
import torch

from dsa_runner import kernels, triton_mla


def _inputs(B=2, T=3, H=16, d=48, S=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, H, d, generator=g), torch.randn(B, S, d, generator=g)


def test_reference_equals_dense_attention_over_all_keys():
    q, kv = _inputs()
    dv = 32
    ref = triton_mla.mqa_attention_reference(q, kv, dv, 0.3)
    # the same thing through the runner's generic dense attention: one KV head, value = latent prefix
    dense = kernels.dense_attention(q.transpose(1, 2), kv[:, None], kv[:, None, :, :dv], None, 0.3)
    torch.testing.assert_close(ref, dense, atol=1e-5, rtol=1e-5)


def test_reference_with_indices_equals_dsa_reference():
    q, kv = _inputs()
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(kv.shape[1], generator=g)[:20] for _ in range(6)]).view(2, 3, 20)
    idx[0, 1, 5:] = -1  # a token with fewer selected keys
    ref = triton_mla.mqa_attention_reference(q, kv, 16, 0.3, idx)
    dsa = kernels.dsa_attention_reference(q.transpose(1, 2), kv[:, None], kv[:, None, :, :16], idx, 0.3)
    torch.testing.assert_close(ref, dsa, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref, triton_mla.mqa_attention_reference(q, kv, 16, 0.3))


needs_triton = pytest.mark.skipif(not triton_mla.available("cpu"),
                                  reason="Triton kernels need CUDA or TRITON_INTERPRET=1")


@needs_triton
@pytest.mark.parametrize("dv,block_v,splits,sparse", [(32, None, 1, False), (32, 16, 3, False), (16, None, 2, True),
                                                      (32, None, 1, True), (32, 16, 1, True)])
def test_triton_mqa_attention_matches_reference(dv, block_v, splits, sparse):
    q, kv = _inputs()
    idx = None
    if sparse:
        g = torch.Generator().manual_seed(2)
        # distinct rows per token, as a top-k selection gives
        idx = torch.stack([torch.randperm(kv.shape[1], generator=g)[:40] for _ in range(6)]).view(2, 3, 40).int()
        idx[1, 2, 7:] = -1
        idx[0, 0, :] = -1  # no key at all: zeros, not NaN
    out = triton_mla.mqa_attention(q, kv, dv, 0.3, idx, splits=splits, block_heads=16, block_v=block_v, block_n=16)
    ref = triton_mla.mqa_attention_reference(q, kv, dv, 0.3, idx)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


@needs_triton
@pytest.mark.parametrize("transposed", [False, True])
def test_triton_decode_index_scores_match_reference(transposed):
    from dsa_runner import triton_kernels

    g = torch.Generator().manual_seed(4)
    B, S, H, D = 2, 300, 16, 16
    q_I, w, k_I = torch.randn(B, 1, H, D, generator=g), torch.randn(B, 1, H, generator=g), torch.randn(B, S, D, generator=g)
    k_scale = torch.rand(B, S, generator=g)
    ref = kernels.index_scores_reference(q_I, w, k_I, None) * k_scale[:, None]
    out = triton_kernels.index_scores_decode(q_I, w, k_I, k_scale, block_n=32, iters=3, transposed=transposed)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
