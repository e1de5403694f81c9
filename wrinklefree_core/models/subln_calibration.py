"""Calibrated SubLN gains: start the inserted RMSNorms where the full-precision model already is.

A SubLN in front of o_proj / down_proj replaces the projection's input x by g * x / rms(x). With
g = 1 (BitNet's init) that rescales every token's attention and FFN output to unit RMS, which on
SmolLM2-135M alone, with no quantization at all, takes held-out perplexity from ~50 to ~10^7: the
network has to re-learn its residual-stream scales before the ternary weights can be trained at all.
Fitting g per channel by least squares to the full-precision model's own inputs,

    g_c = sum_t x_tc n_tc / sum_t n_tc^2,   n_t = x_t / sqrt(mean(x_t^2) + eps),

makes g * n the best per-channel reconstruction of x on calibration text, so the converted model at
quant_lambda = 0 computes close to the teacher (~500 instead of ~10^7 on the same rows) and every
later stage starts from a working network (docs/experiments.md).

Design choices:
- Statistics come from the unconverted model (forward pre-hooks on the nn.Linear that will get a
  SubLN), so every layer is fitted to the teacher's inputs, not to inputs an earlier SubLN bent.
- Sums are accumulated in fp64 over batches, so the fit does not depend on the batch size.
- A channel that is exactly zero on all calibration tokens has no fit; it gets the layer's median
  gain instead of 0, so it stays alive for text where it is not zero.
- Only the gains change; weights, shapes and state-dict names are those of a plain conversion.
"""

from __future__ import annotations

import torch
from torch import nn

from wrinklefree_core.models.convert import expected_bitlinear_layout
from wrinklefree_core.config.bitnet import BitNetSettings


class SubLNStats:
    """Running least-squares sums for one SubLN's per-channel gain."""

    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.xn = torch.zeros(dim, dtype=torch.float64)
        self.nn = torch.zeros(dim, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Accumulate the inputs `x` (..., dim) of one forward."""
        x = x.detach().reshape(-1, x.shape[-1]).double()
        n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        self.xn += (x * n).sum(0).cpu()
        self.nn += n.pow(2).sum(0).cpu()

    def gains(self) -> torch.Tensor:
        """The fitted per-channel gains (fp32); channels never seen non-zero get the median gain."""
        seen = self.nn > 0
        if not bool(seen.any()):
            raise ValueError("SubLN calibration saw only zero inputs; use calibration text that reaches this layer")
        g = torch.zeros_like(self.xn)
        g[seen] = self.xn[seen] / self.nn[seen]
        g[~seen] = g[seen].median()
        return g.float()


@torch.no_grad()
def fit_subln_gains(model: nn.Module, settings: BitNetSettings, rows: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Least-squares SubLN gains for each projection `settings` gives a SubLN, from `model`'s own activations.

    `model` is the *unconverted* full-precision HF model; `rows` an int64 (N, L) tensor of token ids.
    Returns {qualified projection name: gains (in_features,)}; empty when `settings.subln` is 'none'.
    """
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"SubLN calibration needs a non-empty (rows, tokens) tensor of ids, got shape {tuple(rows.shape)}")
    layout = expected_bitlinear_layout(len(model.model.layers), settings)
    names = [name for name, wants in layout.items() if wants]
    if not names:
        return {}
    eps = settings.subln_eps if settings.subln_eps is not None else model.config.rms_norm_eps
    stats = {name: SubLNStats(model.get_submodule(name).in_features, eps) for name in names}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(lambda _m, args, s=stats[name]: s.add(args[0])) for name in names
    ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, rows.shape[0], batch_size):
            model(input_ids=rows[start : start + batch_size].to(device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: s.gains() for name, s in stats.items()}


@torch.no_grad()
def apply_subln_gains(model: nn.Module, gains: dict[str, torch.Tensor]) -> None:
    """Copy fitted gains into the SubLN weights of a converted model."""
    for name, g in gains.items():
        sub_norm = getattr(model.get_submodule(name), "sub_norm", None)
        if sub_norm is None:
            raise ValueError(f"{name} has no SubLN to calibrate; convert the model with the same settings first")
        sub_norm.weight.copy_(g.to(sub_norm.weight.dtype))
