"""Quantize-with-STE entry points used by the models.

`quantize_weight_ste(w, lam)` and `quantize_activation_ste(x, lam)` return the lambda-blended fake
quantized tensor with an identity gradient. Which implementation runs:

- eager on CUDA (and ROCm) with triton importable: the fused Triton kernels in `kernels.py` (one
  launch for activations, two for weights; the weight scale is reduced on device, never read by
  the host);
- under torch.compile, on CPU, for other dtypes, or with WRINKLEFREE_DISABLE_TRITON=1: the torch
  reference, which inductor fuses by itself. Note that inductor's Triton codegen uses approximate
  fp32 division unless `torch._inductor.config.eager_numerics.division_rounding` is set (env
  TORCHINDUCTOR_EMULATE_DIVISION_ROUNDING=1), which can move values at a rounding boundary.

`use_triton=True` forces the kernels on any device, which is how the tests run them on CPU under
TRITON_INTERPRET=1; `use_triton=False` forces the reference. triton is imported only when a kernel
is about to run, so the package imports without it.

For bf16/fp16 the kernels blend in fp32 and round once; the torch path rounds each blend op to the
input dtype. They agree exactly at lam = 0 and to about one ulp of the input dtype otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from wrinklefree_core.quant.reference import activation_quant_ref, weight_quant_ref
from wrinklefree_core.quant.ste import ste_blend

DISABLE_ENV = "WRINKLEFREE_DISABLE_TRITON"
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def triton_available() -> bool:
    """Whether the triton package can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton_for(t: torch.Tensor) -> bool:
    """The default dispatch decision for tensor `t` (see the module docstring)."""
    return (
        t.is_cuda
        and t.dtype in _TRITON_DTYPES
        # checked before the env lookup so that a compiled graph never traces os.environ
        and not torch.compiler.is_compiling()
        and os.environ.get(DISABLE_ENV, "0") != "1"
        and triton_available()
    )


def quantize_weight_ste(w: torch.Tensor, lam: torch.Tensor | float, *, use_triton: bool | None = None) -> torch.Tensor:
    """Ternary fake-quant of a weight, blended by `lam`, straight-through gradient.

    `use_triton`: None picks by device (see the module docstring); True/False force a path.
    """
    if use_triton if use_triton is not None else use_triton_for(w):
        from wrinklefree_core.quant.kernels import weight_quant_ste_triton

        return weight_quant_ste_triton(w, lam)
    return ste_blend(w, weight_quant_ref(w), lam)


def quantize_activation_ste(
    x: torch.Tensor, lam: torch.Tensor | float, *, use_triton: bool | None = None
) -> torch.Tensor:
    """Per-token int8 fake-quant of an activation, blended by `lam`, straight-through gradient.

    `use_triton`: None picks by device (see the module docstring); True/False force a path.
    """
    if use_triton if use_triton is not None else use_triton_for(x):
        from wrinklefree_core.quant.kernels import activation_quant_ste_triton

        return activation_quant_ste_triton(x, lam)
    return ste_blend(x, activation_quant_ref(x), lam)
