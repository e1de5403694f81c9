"""Plain-torch reference quantizers: these functions *define* the numbers.

Every other path (Triton kernels, the GGUF exporter, llama.cpp verification, the tests' independent
forward) must agree with them. Computation order is part of the definition, because float rounding
at the .5 boundary depends on it:

- weights: s = clamp(mean(|W|), eps); W_q = clamp(round(W / s), -1, 1); dequantized value s * W_q.
- activations, per token (last dim): s = 127 / clamp(max|x|, eps); x_q = clamp(round(x * s), -128, 127);
  dequantized value x_q / s.

`torch.round` rounds half to even, as do numpy and stock transformers' BitNet reader. All math runs in
fp32 and the result is cast back to the input dtype.
"""

from __future__ import annotations

import torch

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
ACT_QMAX = 127.0
ACT_QMIN = -128.0


def weight_scale(w: torch.Tensor, eps: float = WEIGHT_EPS) -> torch.Tensor:
    """Per-tensor absmean scale s = clamp(mean|W|, eps), as a 0-dim fp32 tensor (no host sync)."""
    return w.detach().float().abs().mean().clamp(min=eps)


def ternarize_weight(w: torch.Tensor, eps: float = WEIGHT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (W_q in {-1,0,1} as fp32, scale s) for a weight tensor."""
    s = weight_scale(w, eps)
    wq = torch.round(w.float() / s).clamp(-1.0, 1.0)
    return wq, s


def weight_quant_ref(w: torch.Tensor, eps: float = WEIGHT_EPS) -> torch.Tensor:
    """Fake-quantized weight s * W_q in the dtype of `w`."""
    wq, s = ternarize_weight(w, eps)
    return (wq * s).to(w.dtype)


def activation_scale(x: torch.Tensor, eps: float = ACT_EPS) -> torch.Tensor:
    """Per-token scale 127 / clamp(max|x|, eps) over the last dim, fp32, keepdim."""
    return ACT_QMAX / x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=eps)


def quantize_activation(x: torch.Tensor, eps: float = ACT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_q int8 values as fp32, per-token scale) for an activation tensor."""
    s = activation_scale(x, eps)
    xq = torch.round(x.float() * s).clamp(ACT_QMIN, ACT_QMAX)
    return xq, s


def activation_quant_ref(x: torch.Tensor, eps: float = ACT_EPS) -> torch.Tensor:
    """Fake-quantized activation x_q / s in the dtype of `x`."""
    xq, s = quantize_activation(x, eps)
    return (xq / s).to(x.dtype)
