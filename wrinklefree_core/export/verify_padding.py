"""A padded GGUF (padding.py) checked as what it is: the checkpoint's model, wider.

`model_for_file` gives the model the file holds (padded when the file declares the padded widths),
so every later check compares llama.cpp with that; `check_padding` proves the padded model computes
the checkpoint's function with exact ternary values and scales: `identity_error` runs the original
and its padding in float64 with float activations (`float_activations`).
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGUFReader, Keys
from torch import nn

from wrinklefree_core.config.bitnet import BitNetSettings

from wrinklefree_core.export.gguf_layout import target_arch
from wrinklefree_core.export.llamacpp_api import compare_logits
from wrinklefree_core.export import padding
from wrinklefree_core.export.padding import ExportModel, PaddingPlan, export_model, needs_padding
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.lrc import BitLinearLRC
from wrinklefree_core.models.subln import SubLN
from wrinklefree_core.quant.reference import ternarize_weight


def _file_widths(gguf_path: Path) -> dict[str, int] | None:
    """(n_embd, n_ff, n_head, n_head_kv) that a GGUF declares, None when it cannot be read."""
    try:
        reader = GGUFReader(str(gguf_path))
        arch = reader.fields[Keys.General.ARCHITECTURE].contents()
        keys = ("embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv")
        return {k: int(reader.fields[f"{arch}.{k}"].contents()) for k in keys}
    except Exception:  # unreadable or not ours: llama.cpp's load reports it below
        return None


def _widths(model: nn.Module) -> dict[str, int]:
    c = model.config
    return {
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
    }


def model_for_file(gguf_path: Path, original: nn.Module, settings) -> ExportModel:
    """The checkpoint's model as the file holds it: padded when the file declares the padded widths."""
    arch = target_arch(original, settings)
    widths = _file_widths(gguf_path)
    if widths is None or widths == _widths(original) or not needs_padding(original):
        return ExportModel(original, original, settings)
    return export_model(original, settings, arch, pad=True)


# Float64 with float activations, padding redone in float64 (identity_error). What is left is
# the fp32 rounding of the ternary scales that carry c (up/v_proj): <= 6e-8 relative on a SubLN's
# input, which the norm divides out except through eps: 2.8e-8 on SmolLM2, a few 1e-9 on the tiny
# test models. A wrong head map or gain moves the logits by 1e-2 or more. Epsilon mistakes are only
# (1 - r) eps / (2 mean square), ~1e-7 at eps 1e-6, below this bound: tests/export/test_padding.py
# catches them with eps raised to 0.05.
PADDING_MAX_REL_ERROR = 1e-6


def check_padding(
    source: ExportModel, settings, ids: torch.Tensor, exact: np.ndarray
) -> tuple[dict[str, Any], list[str]]:
    """That the padded model is the checkpoint's model (whose logits are `exact`): exact ternary values
    and scales, the same function."""
    padded = source.padded
    identity = identity_error(source.original, settings, padded.plan, ids)
    with torch.no_grad():
        quantized = compare_logits(source.model(ids.view(1, -1)).logits[0].float().numpy(), exact)
    summary = {
        "plan": padded.plan.as_dict(),
        "ternary_matrices_exact": padded.ternary_checked,
        "scale_max_rel_error": padded.scale_max_rel_error,
        "identity_rel_error": identity,
        "identity_bound": PADDING_MAX_REL_ERROR,
        "quantized_vs_unpadded": quantized,
    }
    failures = []
    if not identity <= PADDING_MAX_REL_ERROR:
        failures.append(
            f"the padded model computes another function than the checkpoint (float64 logits differ by {identity:.3g} "
            f"> {PADDING_MAX_REL_ERROR:g}); export with pad=false and report this"
        )
    return summary, failures


def _float_forward(self: BitLinear, x: torch.Tensor) -> torch.Tensor:
    if self.sub_norm is not None:
        x = self.sub_norm(x)
    wq, s = ternarize_weight(self.weight)
    y = F.linear(x, (wq * s).to(x.dtype), self.bias)
    if isinstance(self, BitLinearLRC):
        y = y + F.linear(F.linear(x, self.lrc_V.T), self.lrc_U)
    return y


def _rms_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = self.eps if isinstance(self, SubLN) else self.variance_epsilon
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _is_rms_norm(m: nn.Module) -> bool:
    return isinstance(m, SubLN) or (hasattr(m, "variance_epsilon") and hasattr(m, "weight"))


@contextlib.contextmanager
def float_activations(model: nn.Module) -> Iterator[nn.Module]:
    """While inside, every BitLinear multiplies its unrounded input by s * W_q (plus its LRC term), and
    every RMS norm computes in the input's dtype (HF's and SubLN's cast to fp32).

    Activation rounding is left out because padding provably leaves it alone (zeros move no absmax),
    and because a last-bit difference flips a rounding: with it out, a float64 run of the padded and of
    the original model must agree to summation noise.
    """
    swapped = []
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.forward = types.MethodType(_float_forward, m)
        elif _is_rms_norm(m):
            m.forward = types.MethodType(_rms_norm_forward, m)
        else:
            continue
        swapped.append(m)
    try:
        yield model
    finally:
        for m in swapped:
            del m.forward


def identity_error(original: nn.Module, settings: BitNetSettings, plan: PaddingPlan, ids: torch.Tensor) -> float:
    """Relative L2 distance between the logits of `original` and of its padding, both built and run in
    float64 with float activations: ~1e-15 when padding is exact.

    The padding is redone in float64 so that the check sees the algorithm, not the fp32 rounding of
    the rescaled norm gains (~6e-8 each, the same as storing any checkpoint in fp32); that the file
    holds the fp32 padded model exactly is what the weight and llama.cpp checks show.
    """
    wide = copy.deepcopy(original).double()
    logits = []
    for model in (wide, padding.pad_model(wide, settings, plan).model):  # through the module: tests swap a rule out
        with torch.no_grad(), float_activations(model):
            logits.append(model(ids.view(1, -1)).logits[0])
    return float(torch.linalg.norm(logits[1] - logits[0]) / torch.linalg.norm(logits[0]).clamp(min=1e-300))
