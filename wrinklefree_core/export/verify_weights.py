"""The GGUF's tensors, read back with gguf's own reader, against the checkpoint they were written from.

The logits checks compare llama.cpp with a reference that reads the *file*, so a writer bug that both
would share (a wrong scale, a tensor written for another one) passes them. This check closes that
gap: every ternary matrix must read back as exactly `ternarize_weight(latent) * fp16(scale)` (the
function training uses), every other tensor as the checkpoint's value rounded to the file's type
(F32 exact, F16, or gguf's Q8_0 blocks for a quantized embedding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from wrinklefree_core.export.gguf_layout import GGUFLayout
from wrinklefree_core.export.gguf_quant import quantize_roundtrip
from wrinklefree_core.export.llamacpp_reference import GGUFTensor
from wrinklefree_core.quant.reference import ternarize_weight


def _expected(role: str, value: torch.Tensor, ggml_type: GGMLQuantizationType) -> torch.Tensor:
    if role == "ternary":
        wq, s = ternarize_weight(value)
        return wq * float(np.float16(s.item()))
    return quantize_roundtrip(value, ggml_type)


def check_weights(
    tensors: dict[str, GGUFTensor], model: nn.Module, layout: GGUFLayout
) -> tuple[dict[str, Any], list[str]]:
    """(summary, failures): the tensors whose file values differ from the checkpoint's."""
    state = model.state_dict()
    wrong: list[tuple[str, float]] = []
    for spec in layout.tensors:
        got = tensors[spec.hf_name]
        want = _expected(spec.role, state[spec.hf_name].detach(), got.ggml_type)
        if got.value.shape != want.shape or not torch.equal(got.value, want):
            err = float((got.value - want).abs().max()) if got.value.shape == want.shape else float("inf")
            wrong.append((spec.gguf_name, err))
    summary = {"tensors_checked": len(layout.tensors), "tensors_differing": [n for n, _ in wrong]}
    failures = []
    if wrong:
        shown = ", ".join(f"{n} (max abs {e:.3g})" for n, e in wrong[:3])
        failures.append(f"{len(wrong)} tensors of the GGUF differ from the checkpoint's weights: {shown}")
    return summary, failures
