"""SubLN: the extra RMSNorm BitNet puts in front of the projections that read a sum of many terms.

BitDistill (and llama.cpp's `bitnet` graph) place it before o_proj (input width n_embd) and before
down_proj (input width n_ff). Without it the activations entering those ternary matmuls have a wide,
layer-dependent range and per-token int8 quantization loses most of the signal. The weight starts at
ones so that a freshly converted model only renormalizes.

The math mirrors HF's LlamaRMSNorm (fp32 variance, cast back before the weight) so that the GGUF
and stock-transformers exports compute the same thing.
"""

from __future__ import annotations

import torch
from torch import nn


class SubLN(nn.Module):
    """RMSNorm over the last dimension with a learnable per-channel weight initialised to ones."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
