"""BitLinear: an nn.Linear whose forward uses ternary weights and int8 per-token activations.

Design choices:
- It *is* an nn.Linear (same `weight`/`bias` names and shapes), so a converted checkpoint keeps the
  original parameter names and an HF state dict loads into it unchanged. The latent full-precision
  weight is what trains; quantization happens in forward (quantization-aware training with an STE).
- `quant_lambda` (a 0-dim buffer, not saved in the state dict) blends full precision (0) and fully
  quantized (1). The warmup scheduler writes it each optimizer step; checkpoints record it in
  config.json. As a tensor it never forces a recompile or a host sync.
- An optional `sub_norm` (SubLN) runs on the input before quantization; conversion attaches it to
  o_proj and down_proj. Its weight is saved as `<proj>.sub_norm.weight`.
- The bias (Qwen2's q/k/v) stays full precision and is added after the matmul.
- `integer_matmul` (a plain attribute, off by default, never saved) switches the product to
  `quant/int_matmul.py`'s int8 kernel, which is exact only at quant_lambda = 1. Only the train module
  sets it, through `set_integer_matmul`, on the steps whose lambda it knows to be 1; reading the
  lambda tensor here would cost a host sync per layer on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrinklefree_core.models.subln import SubLN
from wrinklefree_core.quant.int_matmul import ternary_int8_linear
from wrinklefree_core.quant.ops import quantize_activation_ste, quantize_weight_ste


class BitLinear(nn.Linear):
    """Linear layer with ternary weight / int8 activation fake quantization and an STE."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        sub_norm_eps: float | None = None,
        quant_lambda: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("quant_lambda", torch.tensor(float(quant_lambda), device=device), persistent=False)
        self.sub_norm = SubLN(in_features, sub_norm_eps, device=device, dtype=dtype) if sub_norm_eps is not None else None
        self.integer_matmul = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, sub_norm_eps: float | None = None, quant_lambda: float = 1.0) -> "BitLinear":
        """Build a BitLinear that shares `linear`'s weight and bias tensors (no copy)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            sub_norm_eps=sub_norm_eps,
            quant_lambda=quant_lambda,
            device="meta",
        )
        new.weight = linear.weight
        if linear.bias is not None:
            new.bias = linear.bias
        device, dtype = linear.weight.device, linear.weight.dtype
        new.quant_lambda = torch.tensor(float(quant_lambda), device=device)
        if new.sub_norm is not None:
            new.sub_norm = SubLN(linear.in_features, sub_norm_eps, device=device, dtype=dtype)
        return new

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round lambda (0.3 -> 0.30078); keep it fp32 and only follow the device.
        lam = self.quant_lambda
        super()._apply(fn, recurse)
        self.quant_lambda = lam.to(device=self.weight.device, dtype=torch.float32)
        return self

    def matmul_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the weight multiplies: the module input after its SubLN and the activation quantizer."""
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        return quantize_activation_ste(x, self.quant_lambda)

    def quantized_product(self, x: torch.Tensor) -> torch.Tensor:
        """The ternary product of `x` (after SubLN): fake-quant blended by lambda with the STE, or the int8 kernel."""
        if self.integer_matmul:
            return ternary_int8_linear(x, self.weight, self.bias)
        lam = self.quant_lambda
        return F.linear(quantize_activation_ste(x, lam), quantize_weight_ste(self.weight, lam), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_product(self.sub_norm(x) if self.sub_norm is not None else x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sub_norm={self.sub_norm is not None}"


def set_integer_matmul(model: nn.Module, on: bool) -> None:
    """Switch every BitLinear to the int8 product (only valid while quant_lambda is 1) or back to fake-quant."""
    for module in model.modules():
        if isinstance(module, BitLinear):
            module.integer_matmul = bool(on)


def set_quant_lambda(model: nn.Module, value: float) -> None:
    """Write `value` into every BitLinear's quant_lambda in place (no reallocation, no recompile)."""
    for module in model.modules():
        if isinstance(module, BitLinear):
            module.quant_lambda.fill_(float(value))
