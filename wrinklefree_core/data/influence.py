"""Influence-based remixing: DataInf scores of training rows on a probe set, and the mixture-weight update.

Scores (DataInf: Kwon, Wu, Wu and Zou, "DataInf: Efficiently Estimating Data Influence in LoRA-tuned
LLMs and Diffusion Models", ICLR 2024, arXiv:2310.00902). For one weight matrix ("layer" l) let
g_1..g_n be the flattened per-example training-loss gradients (dimension D_l) and v the gradient of
the mean probe loss. Influence functions (Koh and Liang 2017) need v^T (G + lambda I)^-1 g_k with
G = (1/n) sum_i g_i g_i^T. DataInf swaps the average and the inverse,

    (G + lambda I)^-1  ~=  (1/n) sum_i (g_i g_i^T + lambda I)^-1,

and inverts each rank-one term in closed form (Sherman-Morrison: (lambda I + g g^T)^-1 =
(I - g g^T / (lambda + g^T g)) / lambda), so that

    s_k = (1/lambda) * [ v.g_k - (1/n) sum_i (v.g_i) (g_i.g_k) / (lambda + g_i.g_i) ].

Only inner products appear: a_i = v.g_i (n numbers) and the Gram matrix K_ik = g_i.g_k (n x n); D_l never
enters beyond those products. With several layers the scores add up, each layer with its own
lambda_l = damping * (1/(n D_l)) sum_i g_i.g_i (the paper's choice, damping = 0.1). The
approximation is exact for n = 1 and tends to the exact value as lambda dominates G.

Sign: DataInf's influence I(x_k) = -s_k estimates the change of the probe loss when x_k is
up-weighted (positive = harmful). We report s_k, the helpfulness: positive means training on x_k
lowers the probe loss. A source's score is the mean s_k over its sampled rows, where the n rows of
every source together stand for the training distribution in the Hessian approximation.

Weight update (exponentiated gradient on the simplex, the form DoReMi uses for domain weights;
MobileLLM-R1, Zhao et al. 2025, arXiv:2509.24945, re-weights its sources by their influence on
capability-probing sets):

    s_hat = s / max_j |s_j|                          (only relative sizes matter: |s| scales with 1/lambda)
    u     = w * exp(eta * s_hat),  normalised to sum 1
    u     = u clamped to [w_min, w_max]: bounded weights are fixed, the others rescaled to the
            remaining mass, repeated until none crosses a bound
    w_new = beta * w + (1 - beta) * u                (EMA smoothing; sums to 1, and stays within the
                                                      bounds once w is: start weights outside them move in)

Pure torch, no Lightning; the callback (training/callbacks/influence.py) draws the rows and applies
the weights, and example_grads.py turns a model and rows into the per-example gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def damping_lambda(grads: torch.Tensor, damping: float) -> float:
    """DataInf's lambda for one layer: damping * mean over examples of ||g_i||^2 / D (grads: [n, D])."""
    n, dim = grads.shape
    return float(damping * torch.linalg.vector_norm(grads, dim=1).double().pow(2).sum() / (n * dim))


def products(grads: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v.g_i [n], Gram g_i.g_k [n, n]) in float64: the only use DataInf makes of the gradients."""
    # Two fp32 matmuls over the [n, D] gradients are the whole cost (D = V * d can be tens of millions).
    return (grads @ probe).double(), (grads @ grads.T).double()


def datainf_from_products(a: torch.Tensor, gram: torch.Tensor, lam: float) -> torch.Tensor:
    """s_k of the module docstring from `products` and lambda; float64 [n]."""
    if lam <= 0:
        raise ValueError(f"DataInf needs lambda > 0, got {lam}")
    coef = a / (lam + gram.diagonal())  # (v.g_i) / (lambda + g_i.g_i)
    return (a - (coef @ gram) / a.shape[0]) / lam


def datainf_layer_scores(grads: torch.Tensor, probe: torch.Tensor, lam: float) -> torch.Tensor:
    """s_k of the module docstring for one layer: grads [n, D] (training rows), probe [D]; float64 [n]."""
    return datainf_from_products(*products(grads, probe), lam)


def datainf_scores(grads: Sequence[torch.Tensor], probes: Sequence[torch.Tensor], damping: float) -> torch.Tensor:
    """Per-example helpfulness summed over layers; grads[l]: [n, D_l], probes[l]: [D_l]; float64 [n]."""
    if len(grads) != len(probes) or not grads:
        raise ValueError(f"need one probe gradient per layer, got {len(grads)} layers and {len(probes)} probes")
    total = torch.zeros(grads[0].shape[0], dtype=torch.float64, device=grads[0].device)
    for g, v in zip(grads, probes):
        a, gram = products(g, v)
        lam = damping * float(gram.diagonal().sum()) / (g.shape[0] * g.shape[1])  # damping_lambda, from the Gram
        total += datainf_from_products(a, gram, lam)
    return total


def source_scores(example_scores: torch.Tensor, source: torch.Tensor, num_sources: int) -> torch.Tensor:
    """Mean example score per source index 0..num_sources-1 (float64); a source without rows scores 0."""
    source = source.to(example_scores.device)
    sums = torch.zeros(num_sources, dtype=torch.float64, device=example_scores.device).index_add_(0, source, example_scores.double())
    counts = torch.bincount(source, minlength=num_sources).double()
    return (sums / counts.clamp(min=1)).cpu()


def clamp_to_simplex(weights: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Weights summing to 1 within [lo, hi]: clamp, rescale the unclamped ones to the remaining mass, repeat."""
    k = weights.numel()
    if lo * k > 1 + 1e-12 or hi * k < 1 - 1e-12:
        raise ValueError(f"no {k} weights in [{lo}, {hi}] sum to 1; widen influence.min_weight/max_weight")
    w = weights.double() / weights.double().sum()
    fixed = torch.zeros(k, dtype=torch.bool)
    for _ in range(k + 1):
        low, high = (w < lo) & ~fixed, (w > hi) & ~fixed
        if not (low.any() or high.any()):
            break
        w = torch.where(low, torch.full_like(w, lo), torch.where(high, torch.full_like(w, hi), w))
        fixed |= low | high
        free_mass = w[~fixed].sum()
        if free_mass > 0:
            w[~fixed] *= (1 - w[fixed].sum()) / free_mass
        else:  # every weight sits at a bound; share what is left evenly (only reachable through rounding)
            w += (1 - w.sum()) / k
    return w


def update_weights(
    weights: torch.Tensor,
    scores: torch.Tensor,
    *,
    step_size: float,
    min_weight: float,
    max_weight: float,
    smoothing: float,
) -> torch.Tensor:
    """The new mixture weights from the current ones and per-source scores (module docstring), float64."""
    w = weights.double() / weights.double().sum()
    s = scores.double()
    scale = s.abs().max()
    s_hat = s / scale if scale > 0 else torch.zeros_like(s)
    # softmax(log w + eta s_hat) is w * exp(eta s_hat) normalised, without overflow for large step sizes.
    logits = torch.log(w.clamp(min=1e-300)) + step_size * s_hat
    u = torch.softmax(logits, dim=0)
    u = clamp_to_simplex(u, min_weight, max_weight)
    new = smoothing * w + (1 - smoothing) * u
    return new / new.sum()
