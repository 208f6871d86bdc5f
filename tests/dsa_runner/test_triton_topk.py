"""The Triton radix top-k (CUDA, or TRITON_INTERPRET=1 on CPU) against torch.topk: the same multiset of
selected scores, distinct indices, -1 exactly for selected -inf scores, ties to the most recent keys."""

import pytest
import torch

from dsa_runner import triton_topk

pytestmark = pytest.mark.skipif(not triton_topk.available("cpu") and not torch.cuda.is_available(),
                                reason="Triton top-k needs CUDA or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() and triton_topk.available("cuda") else "cpu"


def _check(x: torch.Tensor, k: int, **kw) -> torch.Tensor:
    out = triton_topk.top_k(x.to(DEVICE), k, **kw).cpu()
    assert out.shape == (*x.shape[:-1], k) and out.dtype == torch.int64
    xf = x.float().reshape(-1, x.shape[-1])
    for r, sel in enumerate(out.reshape(-1, k)):
        picked = sel >= 0
        assert picked.sum() == len(set(sel[picked].tolist())), "an index selected twice"
        got = torch.where(picked, xf[r][sel.clamp(min=0)], float("-inf"))
        assert not torch.isneginf(got[picked]).any(), "a -inf score came out as an index"
        torch.testing.assert_close(got.sort().values, torch.topk(xf[r], k).values.sort().values, rtol=0, atol=0)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S,k", [(1000, 50), (4096, 64), (300, 300), (37, 20), (5000, 1)])
def test_random_scores(dtype, S, k):
    g = torch.Generator().manual_seed(S + k)
    _check(torch.randn(2, 3, S, generator=g).to(dtype), k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(split=4, tile=256), dict(groups=256, split=2, unroll=1, tile=512)])
def test_rows_split_over_programs(dtype, kw):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5000, generator=g).to(dtype)
    x[1, 4000:] = 0.0  # ties at the boundary, found in several programs' slots
    x[1, :1000] = float("-inf")
    _check(x, 64, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clustered_scores_overflow_the_candidates(dtype):
    # high scores in one contiguous run land in few strided groups... and many ties at the low end
    x = torch.rand(2, 4000).to(dtype)
    x[0, 1000:1600] += 5.0
    x[1] = torch.randint(0, 3, (4000,)).to(dtype)
    _check(x, 100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_go_to_the_most_recent_keys(dtype):
    x = torch.zeros(1, 1, 2000, dtype=dtype)
    x[..., 5] = 1.0
    x[..., 7] = -0.0  # equal to +0.0
    out = _check(x, 10)
    assert sorted(out.flatten().tolist()) == [5] + list(range(1991, 2000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [1, 2])
def test_few_ties_among_the_candidates(dtype, split):
    # few enough candidates for the in-register path; 33 equal scores at the boundary, 10 of them taken
    x = torch.rand(1, 1000) * 0.5
    x[0, torch.arange(100, 900, 20)] = 2.0 + torch.arange(40) / 64
    tied = torch.arange(5, 995, 30)  # odd positions, the 40 higher scores sit at even ones
    x[0, tied] = 1.0
    out = _check(x.to(dtype), 50, split=split, tile=256)
    assert sorted(set(out.flatten().tolist()) & set(tied.tolist())) == tied[-10:].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_rows_give_minus_one(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1500, generator=g).to(dtype)
    x[0] = float("-inf")  # nothing visible
    x[1, 40:] = float("-inf")  # fewer visible keys than k
    x[2, :700] = float("-inf")  # left padding
    x[3, ::2] = float("-inf")
    out = _check(x, 128)
    assert (out[0] == -1).all()
    assert sorted(out[1][out[1] >= 0].tolist()) == list(range(40)) and (out[1] == -1).sum() == 88
    assert (out[2] >= 700).all() and (out[3] % 2 == 1).all()


def test_extreme_values_and_k_zero():
    x = torch.tensor([[float("inf"), 3.0, -1e38, 1e-38, -1e-38, 0.0, float("-inf"), 2.0]])
    _check(x, 4)
    _check(x, 8)
    assert triton_topk.top_k(x.to(DEVICE), 0).shape == (1, 0)
