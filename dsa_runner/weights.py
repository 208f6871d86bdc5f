"""Serving-time weight formats for the CPU: int8 weight-only linears.

Decoding one token at a time is bound by reading the weights: SmolLM2-135M in float32 is 540 MB per
step (plus the DSA indexers), and ``F.linear`` at batch 1 reads all of it. ``Int8Linear`` keeps each
linear twice: int8 with one scale per output row (a quarter of the bytes) for small batches, through
``aten._weight_int8pack_mm``; and bfloat16 for larger ones (prefill, n=16 decoding), where oneDNN's
bf16 GEMM (AMX / AVX512-BF16) is faster than the int8 kernel. Measured on the 2-core Xeon of this
project (see bench/RESULTS.md): about 2.7x faster per decode step at batch 1 than float32, with the same
greedy tokens on the benchmark prompt.

``quantize_int8(model)`` replaces every ``nn.Linear`` (attention, MLP, the tied ``lm_head`` and the DSA
indexers' projections); each keeps a ``weight`` attribute (bfloat16) for code that reads it.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_BATCH = 4  # rows (batch x tokens) up to which the int8 kernel is used


def int8_supported() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W as int8 * per-row scale for small inputs, bfloat16 otherwise."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        self.out_features, self.in_features = w.shape
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("w_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.weight = nn.Parameter(w.to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.bfloat16:
            x2 = x2.to(torch.bfloat16)
        if x2.shape[0] <= SMALL_BATCH:
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.w_int8, self.scale)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = torch.nn.functional.linear(x2, self.weight, self.bias)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_int8(model: nn.Module) -> int:
    """Replaces every nn.Linear of ``model`` (on the CPU) by an Int8Linear; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
