"""Straight-through estimator with a lambda blend.

ste_blend(x, q, lam) = x + lam * (q - x).detach()

Forward value is (1 - lam) * x + lam * q: lam = 0 is the full-precision path, lam = 1 the quantized
one, and the warmup in `warmup.py` ramps it between them. The gradient with respect to x is the
identity for every lam, which is the STE. `lam` is a tensor so that changing it never recompiles or
syncs with the host.
"""

from __future__ import annotations

import torch


def ste_blend(x: torch.Tensor, q: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Blend `x` towards its quantized value `q` by `lam`, passing gradients straight through."""
    return x + (lam * (q - x)).detach()
