"""ZClip: adaptive gradient-norm clipping from running statistics of the norm itself.

From Kumar, Owen, Chowdhury and Güra, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training" (2025).
A fixed clip threshold is either too loose late in training (spikes pass) or too tight early on
(every step is clipped). ZClip keeps an EMA of the gradient norm's mean and variance and clips only
norms that are outliers relative to the recent past.

Algorithm, per optimizer step with total gradient norm g (L2 over all gradients):
- Warmup (the first `warmup_steps` steps, at least 1): plain clipping at the ceiling `max_norm`;
  the raw norms are collected, and at the end of warmup mean = their mean and var = their
  population variance.
- Then z = (g - mean) / (std + eps). A spike (z > z_thresh) is clipped to
  mean + z_thresh * std (the paper's z-score threshold; its repository's "adaptive_scaling" variant is
  not used). The clip target is min(that value, max_norm): the configured grad_clip stays a ceiling
  that ZClip never exceeds.
- The EMA is updated with the spike-clipped norm (before the ceiling), as in the reference
  implementation, so one spike does not inflate the statistics that should detect the next one:
      mean <- alpha * mean + (1 - alpha) * g'
      var  <- alpha * var  + (1 - alpha) * (g' - mean)^2      (with the *updated* mean)

Design choices:
- All statistics are Python floats (float64): one host sync per step to read the norm, which the
  clip decision needs anyway; the arithmetic is exact to reproduce and to check by hand.
- The norm is accumulated in at least fp32 whatever the gradient dtype. Gradients are scaled by target / g,
  so after clipping their norm is `clipped_to` (up to rounding).
- A non-finite norm raises NonFiniteGradientError before anything changes (gradients, EMA, step
  count), so the caller can skip the batch or stop with a clear message.
- `state_dict()` / `load_state_dict()` carry the step count, EMA and warmup buffer: a resumed run
  clips exactly as the uninterrupted one would.
- Call it after backward (and after any gradient unscaling), before optimizer.step(). Under DDP the
  gradients are already all-reduced, so every rank computes the same norm. Under FSDP each rank
  holds gradient shards: the norm is then the global one (grad_norm.py all-reduces the squared
  sum), so every rank clips by the same factor and keeps the same statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from wrinklefree_core.training.grad_norm import global_grad_norm, local_values


class NonFiniteGradientError(RuntimeError):
    """The total gradient norm is inf or nan; nothing was clipped and no statistics changed."""


def _named_grads(model_or_params: nn.Module | Iterable[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    if isinstance(model_or_params, nn.Module):
        named = list(model_or_params.named_parameters())
    else:
        named = [(f"param[{i}]", p) for i, p in enumerate(model_or_params)]
    return [(name, p.grad) for name, p in named if p.grad is not None]


def total_grad_norm(grads: list[torch.Tensor]) -> float:
    """L2 norm over all `grads`, accumulated in at least fp32, as a Python float."""
    if not grads:
        return 0.0
    device = grads[0].device
    # fp16/bf16 are widened to fp32; fp64 stays fp64.
    norms = [torch.linalg.vector_norm(g, dtype=torch.promote_types(g.dtype, torch.float32)) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=torch.float64) for n in norms])))


class ZClip:
    """Z-score adaptive gradient clipping under a fixed ceiling (see the module docstring)."""

    def __init__(
        self, alpha: float = 0.97, z_thresh: float = 2.5, warmup_steps: int = 25, max_norm: float = 1.0, eps: float = 1e-6
    ):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not z_thresh > 0 or not max_norm > 0:
            raise ValueError(f"z_thresh and max_norm must be > 0, got {z_thresh} and {max_norm}")
        self.alpha = alpha
        self.z_thresh = z_thresh
        self.warmup_steps = max(1, int(warmup_steps))
        self.max_norm = max_norm
        self.eps = eps
        self.steps = 0
        self.mean: float | None = None
        self.var: float | None = None
        self.buffer: list[float] = []

    @property
    def std(self) -> float | None:
        """EMA standard deviation of the norm (None during warmup)."""
        return None if self.var is None else math.sqrt(self.var)

    def step(self, model_or_params: nn.Module | Iterable[torch.Tensor]) -> dict[str, float]:
        """Clip the gradients of `model_or_params` in place and update the statistics.

        Returns {"grad_norm": norm before clipping, "clipped_to": norm after clipping (== grad_norm
        when nothing was clipped), "z": z-score of grad_norm (0.0 during warmup)}. Raises
        NonFiniteGradientError, changing nothing, when the norm is inf or nan.
        """
        named = _named_grads(model_or_params)
        grads = [g for _, g in named]
        norm = global_grad_norm(grads)  # a collective when the gradients are FSDP shards
        if not math.isfinite(norm):
            bad = [name for name, g in named if not bool(torch.isfinite(local_values(g)).all())][:5]
            raise NonFiniteGradientError(
                f"gradient norm is {norm} at step {self.steps}; non-finite gradients in {bad}. "
                "Skip this batch, lower the learning rate, or check the loss for inf/nan."
            )

        z = 0.0
        if self.mean is None:
            target = self.max_norm
            self.buffer.append(norm)
            if len(self.buffer) >= self.warmup_steps:
                self._initialize()
        else:
            std = math.sqrt(self.var)
            z = (norm - self.mean) / (std + self.eps)
            adaptive = self.mean + self.z_thresh * std if z > self.z_thresh else norm
            target = min(adaptive, self.max_norm)
            self.mean = self.alpha * self.mean + (1.0 - self.alpha) * adaptive
            self.var = self.alpha * self.var + (1.0 - self.alpha) * (adaptive - self.mean) ** 2
        self.steps += 1

        if norm > target:
            coef = target / norm
            for g in grads:
                g.mul_(coef)
            return {"grad_norm": norm, "clipped_to": target, "z": z}
        return {"grad_norm": norm, "clipped_to": norm, "z": z}

    def _initialize(self) -> None:
        n = len(self.buffer)
        self.mean = sum(self.buffer) / n
        self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
        self.buffer = []

    def state_dict(self) -> dict[str, Any]:
        """Step count, EMA mean/var (None during warmup) and the warmup buffer."""
        return {"steps": self.steps, "mean": self.mean, "var": self.var, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned; hyper-parameters stay those given to the constructor."""
        self.steps = int(state["steps"])
        self.mean = None if state["mean"] is None else float(state["mean"])
        self.var = None if state["var"] is None else float(state["var"])
        self.buffer = [float(x) for x in state["buffer"]]
