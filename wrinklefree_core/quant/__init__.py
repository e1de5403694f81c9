"""Quantization: the torch reference that defines the numbers, the STE ops, and the lambda warmup.

The Triton kernels (`quant.kernels`) are not imported here: they need triton, which is optional,
and `ops` loads them only when a kernel is about to run.
"""

from wrinklefree_core.quant.ops import quantize_activation_ste, quantize_weight_ste, triton_available
from wrinklefree_core.quant.reference import (
    ACT_EPS,
    ACT_QMAX,
    ACT_QMIN,
    WEIGHT_EPS,
    activation_quant_ref,
    activation_scale,
    quantize_activation,
    ternarize_weight,
    weight_quant_ref,
    weight_scale,
)
from wrinklefree_core.quant.ste import ste_blend
from wrinklefree_core.quant.warmup import LambdaWarmup

__all__ = [
    "ACT_EPS",
    "ACT_QMAX",
    "ACT_QMIN",
    "WEIGHT_EPS",
    "LambdaWarmup",
    "activation_quant_ref",
    "activation_scale",
    "quantize_activation",
    "quantize_activation_ste",
    "quantize_weight_ste",
    "ste_blend",
    "ternarize_weight",
    "triton_available",
    "weight_quant_ref",
    "weight_scale",
]
