"""The fully quantized BitLinear product as an integer matmul: int8 activations x ternary weights.

    ternary_int8_linear(x, w, bias)    y = (x_q @ W_q^T) * s_w / s_x + bias, x_q int8, W_q in {-1, 0, 1}
    int_matmul_faster(device)          where the integer product is the default (below)

At quant_lambda = 1 the fake-quantized forward F.linear(x_q / s_x, s_w * W_q) is, in exact
arithmetic, the integer product x_q @ W_q^T scaled once per output. `torch._int_mm` computes that
product exactly in int32 (|x_q| <= 128, |W_q| <= 1: no overflow below 2^24 input features), so the only
rounding left is the final scale; the float path also rounds every partial sum. The quantizers are
`quant/reference.py`'s, so the integer codes are exactly the ones the reference and the exporter use.

Backward is the STE of the float path, unchanged: dx = dy @ (s_w W_q), dW = dy^T @ (x_q / s_x), db =
sum(dy), in the gradient's dtype. The saved tensors are the int8 codes and their scales, a quarter of
the float activations the float path keeps.

Where it is the default (`int_matmul_faster`): CPUs with VNNI (AVX512-VNNI or AVX-VNNI) or AMX, where
oneDNN's int8 GEMM ran 3.3-5.3x faster than the fp32 one on SmolLM2's projection shapes
(bench/int_matmul.py). It is not the default on other CPUs and on CUDA, where it has not been measured;
`compute.int_matmul=true` forces it anywhere `torch._int_mm` takes the shapes.
"""

from __future__ import annotations

import functools

import torch

from wrinklefree_core.quant.reference import quantize_activation, ternarize_weight


class _TernaryInt8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xq, x_scale = quantize_activation(x2)  # codes as fp32 (exact integers), per-row 127 / max|x|
        wq, w_scale = ternarize_weight(weight)
        xq8, wq8 = xq.to(torch.int8), wq.to(torch.int8)
        acc = torch._int_mm(xq8, wq8.t())
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        y = (acc.float() * (w_scale / x_scale)).to(out_dtype)
        if bias is not None:
            y = y + bias.to(out_dtype)
        ctx.save_for_backward(xq8, x_scale, wq8, w_scale)
        ctx.has_bias = bias is not None
        ctx.weight_dtype = weight.dtype
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xq8, x_scale, wq8, w_scale = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        w_dq = (wq8.float() * w_scale).to(g.dtype)
        x_dq = (xq8.float() / x_scale).to(g.dtype)
        grad_x = (g @ w_dq).reshape(*grad.shape[:-1], w_dq.shape[1]) if ctx.needs_input_grad[0] else None
        grad_w = (g.t() @ x_dq).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def ternary_int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BitLinear's product at quant_lambda = 1 through an int8 matmul, with the float path's STE gradient."""
    return _TernaryInt8Linear.apply(x, weight, bias)


@functools.cache
def int_matmul_faster(device_type: str) -> bool:
    """Whether the integer product is the default on `device_type` (see the module docstring)."""
    if device_type != "cpu":
        return False
    return bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())
