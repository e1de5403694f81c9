"""Hessian-aware ternary initialization (`bitnet.init=gptq`): GPTQ with the training's ternary rule.

Round-to-nearest ternarizes each weight on its own, s * clamp(round(w / s), -1, 1), and on SmolLM2-135M
that multiplies held-out perplexity by ~10^6. GPTQ quantizes one input column at a time and moves the
column's rounding error onto the columns not yet quantized, so that the layer's *output* on real
inputs X changes as little as it can:

    H = sum_t x_t x_t^T + damping * mean(diag H) * I        (x_t: what the weight multiplies)
    U = upper Cholesky factor of H^-1
    for column j:  q_j = s * clamp(round(w_j / s), -1, 1);  e = (w_j - q_j) / U_jj;  w_k -= e * U_jk (k > j)

Design choices:
- The scale is the training rule's per-tensor absmean, so the export and the STE read the same
  numbers. The latent weight kept is each column as it stood when it was rounded (w_j above, after
  the earlier columns' updates): continuous, so training moves it as usual, and its ternarization is
  the GPTQ result when s = mean|latent|. That s depends on the updates, so the pass is repeated with
  s set to the previous latent's absmean (SCALE_ITERATIONS = 2: a third pass cut the weights whose
  rounding still moves from 0.7% to 0.1% without lowering perplexity); the few weights whose rounding still
  moves with the last scale change are counted (`init_flip_fraction`) and left to the training rule.
- x_t is the BitLinear's matmul input (after its SubLN and the int8 activation quantizer), taken
  from the converted model with the layers before already initialized ("true sequential"): within a
  decoder layer, q/k/v share one Hessian, then o_proj (its input now comes from the new q/k/v), then
  gate/up, then down. Each layer's input is cached once (the hidden states and the keyword arguments
  the model passes its layers: masks, rotary embeddings), so each group costs one layer's forward.
- Matrices that share a Hessian are swept as one stacked matrix with a per-row scale (rows are
  independent given their scale): four sweeps per layer instead of seven. Sweeps run in float32
  (the Cholesky factor is computed in float64 first); on SmolLM2-135M the whole init takes ~65 s
  on 2 CPU cores, two thirds of it in the column loop.
- Calibration rows come from the run's training data (`cfg.data`), never the held-out split.
- Hessians are summed in float64 (products of float32 inputs are exact there) and rounded to float32
  precision before use. Under torch.distributed each rank takes rows[rank::world] and the sums are
  all-reduced before any column is rounded, so every rank holds the same H as one process with
  every row, and computes the same weights.
- A column that no calibration token reaches (diag H = 0) gets H_jj = 1: it is rounded as is and
  pushes no error anywhere.
- Tried on SmolLM2-135M and left out (docs/experiments.md, part 5): GPTQ's act-order (columns by
  decreasing diag H; lower layer error, 11x worse held-out perplexity), targeting the full-precision
  model's own layer inputs (GPTAQ-style; no gain), 128 calibration rows instead of 32 (worse on the
  held-out domains: the Hessians fit the training domain more closely).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.quant.reference import ternarize_weight, weight_quant_ref, weight_scale

SCALE_ITERATIONS = 2
BLOCK = 128
# Sequential groups of a decoder layer: modules in one group share their input (and Hessian).
GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def damped_hessian(h: torch.Tensor, damping: float) -> torch.Tensor:
    """H + damping * mean(diag H) * I, with dead columns (diag 0) set to 1; float64.

    H is first rounded to float32 precision: sums of the same products in another order (another
    batch split, another world size) differ in the last float64 bits, and GPTQ's roundings cascade
    along a row, so a one-ulp change must not reach them.
    """
    h = h.float().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damping * float(torch.diag(h).mean()))
    return h


def inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), the factor GPTQ's updates read."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq_pass(w: torch.Tensor, u: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ sweep at fixed per-row scales `scale` (rows,): (latent = each column when rounded, codes in {-1, 0, 1}).

    Rows are independent given the scale, so matrices that share a Hessian (q/k/v, gate/up) run as
    one stacked matrix, each row carrying its own matrix's scale.
    """
    w = w.clone()
    latent = torch.empty_like(w)
    codes = torch.empty_like(w)
    inverse = 1.0 / scale
    cols = w.shape[1]
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        block = w[:, i1:i2].clone()
        errors = torch.empty_like(block)
        ub = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = block[:, i]
            q = torch.round(col * inverse).clamp_(-1.0, 1.0)
            latent[:, i1 + i] = col
            codes[:, i1 + i] = q
            err = (col - q * scale) / ub[i, i]
            block[:, i:] -= err.unsqueeze(1) * ub[i, i:].unsqueeze(0)
            errors[:, i] = err
        w[:, i2:] -= errors @ u[i1:i2, i2:]
    return latent, codes


def _absmean(w: torch.Tensor) -> float:
    """The training rule's scale of `w` (quant/reference.py), as a Python float."""
    return float(weight_scale(w))


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """trace((W - Q) H (W - Q)^T): the summed squared output change over the tokens behind H (float64)."""
    d = w.double() - q.double()
    return float(((d @ h.double()) * d).sum())


def gptq_ternary_group(
    weights: list[torch.Tensor], h: torch.Tensor, damping: float = 0.01
) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """GPTQ latents for matrices (out_i, in) that share the input Hessian `h` (in, in), in their dtypes, and statistics.

    Each matrix keeps its own per-tensor absmean scale. Statistics per matrix: `flip_fraction`
    (weights whose rounding differs between the last pass's scale and the latent's own absmean) and
    `error_ratio` (output error of GPTQ over that of round-to-nearest, each with its own absmean).
    """
    hd = damped_hessian(h, damping)
    stacked = torch.cat([w.float() for w in weights])
    u = inverse_cholesky(hd).float()
    sizes = [w.shape[0] for w in weights]
    scales = [_absmean(w) for w in weights]
    for _ in range(SCALE_ITERATIONS):
        row_scale = torch.cat([torch.full((n,), s, dtype=torch.float32) for n, s in zip(sizes, scales)])
        latent, codes = gptq_pass(stacked, u, row_scale)
        scales = [_absmean(part) for part in latent.split(sizes)]
    latents, stats = [], []
    for w, part, part_codes in zip(weights, latent.split(sizes), codes.split(sizes)):
        final, s = ternarize_weight(part)  # what the STE and the export will make of the latent
        rtn_error = output_error(w, weight_quant_ref(w), h)
        stats.append(
            {
                "flip_fraction": float((final != part_codes).double().mean()),
                "error_ratio": output_error(w, final.double() * float(s), h) / rtn_error if rtn_error > 0 else 1.0,
            }
        )
        latents.append(part.to(w.dtype))
    return latents, stats


def gptq_ternary(w: torch.Tensor, h: torch.Tensor, damping: float = 0.01) -> tuple[torch.Tensor, dict[str, float]]:
    """The GPTQ latent of one weight `w` (out, in) for input Hessian `h` (in, in), and its statistics."""
    latents, stats = gptq_ternary_group([w], h, damping)
    return latents[0], stats[0]


class HessianStats:
    """Running sum of x x^T over the tokens a BitLinear multiplies (float64)."""

    def __init__(self, dim: int):
        self.h = torch.zeros(dim, dim, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.h += (x.T @ x).cpu()
        self.tokens += x.shape[0]

    def all_reduce(self) -> None:
        """Sum over every rank (no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            tokens = torch.tensor([float(self.tokens)], dtype=torch.float64)
            dist.all_reduce(self.h)
            dist.all_reduce(tokens)
            self.tokens = int(tokens.item())


class _Stop(Exception):
    """Raised by a capture hook once the input it needs has been seen."""


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError("bitnet.init=gptq needs a decoder-only model with model.model.layers")
    return layers


def _layer_inputs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """(hidden states, keyword arguments) that layer 0 receives for each batch."""
    first = _decoder_layers(model)[0]
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def catch(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run_layer(layer: nn.Module, inputs: list[tuple[torch.Tensor, dict[str, Any]]]) -> list[torch.Tensor]:
    outs = []
    for hidden, kwargs in inputs:
        out = layer(hidden, **kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out).detach())
    return outs


def _group_hessian(layer: nn.Module, name: str, inputs: list[tuple[torch.Tensor, dict[str, Any]]]) -> HessianStats:
    """The matmul-input Hessian of `layer.<name>` over `inputs`, stopping each forward once it is seen."""
    module = layer.get_submodule(name)
    stats = HessianStats(module.in_features)

    def capture(mod, args):
        stats.add(mod.matmul_input(args[0]))
        raise _Stop

    handle = module.register_forward_pre_hook(capture)
    try:
        for hidden, kwargs in inputs:
            try:
                layer(hidden, **kwargs)
            except _Stop:
                pass
    finally:
        handle.remove()
    stats.all_reduce()
    return stats


@torch.no_grad()
def gptq_initialize(
    model: nn.Module,
    rows: torch.Tensor,
    *,
    damping: float = 0.01,
    eos_token_id: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Replace every BitLinear's latent weight by its GPTQ latent, layer by layer, in place; returns metrics.

    `rows` (n, L) are calibration token rows; under torch.distributed this rank uses rows[rank::world].
    Metrics: calibration rows and tokens, the mean output-error ratio GPTQ / round-to-nearest over the
    matrices, and the fraction of weights whose rounding the final scale moved.
    """
    from wrinklefree_core.data.packing import position_ids_from_eos

    if dist.is_available() and dist.is_initialized():
        rows = rows[dist.get_rank() :: dist.get_world_size()]
    was_training = model.training
    model.eval()
    batches = []
    for start in range(0, rows.shape[0], batch_size):
        ids = rows[start : start + batch_size].to(next(model.parameters()).device)
        batch = {"input_ids": ids, "use_cache": False}
        if eos_token_id is not None:
            batch["position_ids"] = position_ids_from_eos(ids, eos_token_id)
        batches.append(batch)
    layers = _decoder_layers(model)
    inputs = _layer_inputs(model, batches)
    ratios, flips, weights, tokens = [], 0.0, 0, 0
    try:
        for index, layer in enumerate(layers):
            for group in GROUPS:
                present = [n for n in group if isinstance(_get(layer, n), BitLinear)]
                if not present:
                    continue
                stats = _group_hessian(layer, present[0], inputs)
                tokens = stats.tokens
                modules = [layer.get_submodule(name) for name in present]
                latents, group_stats = gptq_ternary_group([m.weight.data for m in modules], stats.h, damping)
                for module, latent, s in zip(modules, latents, group_stats):
                    module.weight.data.copy_(latent)
                    ratios.append(s["error_ratio"])
                    flips += s["flip_fraction"] * module.weight.numel()
                    weights += module.weight.numel()
            outs = _run_layer(layer, inputs)
            inputs = [(out, kwargs) for out, (_, kwargs) in zip(outs, inputs)]
            if progress is not None:
                progress(index + 1, len(layers))
    finally:
        model.train(was_training)
    return {
        "init_calibration_rows": float(rows.shape[0]),
        "init_calibration_tokens": float(tokens),
        "init_error_ratio": float(sum(ratios) / len(ratios)) if ratios else math.nan,
        "init_flip_fraction": flips / max(weights, 1),
    }


def _get(layer: nn.Module, name: str) -> nn.Module | None:
    try:
        return layer.get_submodule(name)
    except AttributeError:
        return None
