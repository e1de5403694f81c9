"""The int8 BitLinear product against the reference quantizers, and its gradient against the float path's STE.

The forward is compared with the product of the reference codes computed in float64, where the
only error left is fp32's. The int8 product rounds once (the final scale), the float path at every
partial sum: measured on these shapes, 1.5e-7 and 4.5e-7 of the largest output, so the int8 bound
is 1e-6. Gradients use the float path's formulas on the same codes; they agree to fp32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from wrinklefree_core.models.bitlinear import BitLinear, set_integer_matmul
from wrinklefree_core.models.lrc import BitLinearLRC
from wrinklefree_core.quant.int_matmul import ternary_int8_linear
from wrinklefree_core.quant.reference import quantize_activation, ternarize_weight

FWD_BOUND = 1e-6  # relative to the largest output
GRAD_BOUND = 1e-6


def exact_product(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(x_q / s_x) @ (s_w W_q)^T from the reference codes, in float64."""
    xq, xs = quantize_activation(x.reshape(-1, x.shape[-1]))
    wq, ws = ternarize_weight(w)
    y = (xq.double() / xs.double()) @ (wq.double() * ws.double()).t()
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*x.shape[:-1], w.shape[0])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("shape", [(5, 96), (3, 7, 96), (2, 4, 8, 96)])
def test_forward_is_the_exact_product_of_the_reference_codes(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3
    w = torch.randn(40, 96, generator=gen) * 0.05
    b = torch.randn(40, generator=gen)
    y = ternary_int8_linear(x, w, b)
    assert y.shape == (*shape[:-1], 40) and y.dtype == torch.float32
    assert rel(y, exact_product(x, w, b)) < FWD_BOUND


def test_the_product_is_the_integer_sum_scaled_once():
    # Codes +-127 (and one 64: 0.5 * 127 rounds half to even) times weights 1 over 4096 inputs.
    k = 4096
    x = torch.full((2, k), 1.0)
    x[:, ::2] = -1.0
    x[0, 0] = 0.5  # a code of 64 (127 * 0.5 rounds half to even)
    w = torch.ones(3, k)
    y = ternary_int8_linear(x, w)
    acc = 64 - 127 * (k // 2 - 1) + 127 * (k // 2)  # row 0's integer sum
    assert float(y[0, 0]) == pytest.approx(acc / 127.0, rel=1e-7)


def test_gradients_match_the_float_path_at_lambda_one():
    gen = torch.Generator().manual_seed(1)
    layer = BitLinear(96, 40, bias=True, sub_norm_eps=1e-5)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 96, generator=gen) * 0.05)
    x = torch.randn(3, 7, 96, generator=gen, requires_grad=True)
    grads = []
    for on in (False, True):
        layer.zero_grad()
        x.grad = None
        set_integer_matmul(layer, on)
        y = layer(x)
        (y * torch.linspace(-1, 1, 40)).sum().backward()
        grads.append((y.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone(), layer.sub_norm.weight.grad.clone()))
    for name, a, b in zip(("y", "x", "weight", "bias", "sub_norm"), grads[1], grads[0]):
        assert rel(a, b) < GRAD_BOUND, name


def test_lrc_layer_uses_the_integer_product_and_keeps_its_correction():
    gen = torch.Generator().manual_seed(2)
    base = BitLinear(64, 48)
    with torch.no_grad():
        base.weight.copy_(torch.randn(48, 64, generator=gen) * 0.1)
    layer = BitLinearLRC.from_bitlinear(base, rank=4, generator=gen)
    with torch.no_grad():
        layer.lrc_U.copy_(torch.randn(48, 4, generator=gen))
    x = torch.randn(6, 64, generator=gen)
    float_y = layer(x)
    set_integer_matmul(layer, True)
    assert layer.integer_matmul
    int_y = layer(x)
    correction = x @ layer.lrc_V @ layer.lrc_U.t()
    assert rel(int_y, float_y) < FWD_BOUND
    assert rel(int_y - correction, exact_product(x, layer.weight)) < 1e-5


def test_a_frozen_weight_gets_no_gradient():
    layer = BitLinear(32, 16)
    layer.weight.requires_grad_(False)
    set_integer_matmul(layer, True)
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None


def test_autocast_returns_the_autocast_dtype():
    layer = BitLinear(64, 32)
    set_integer_matmul(layer, True)
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert rel(y.float(), exact_product(x, layer.weight)) < 1e-2  # bf16 keeps 8 bits


def test_compiled_product_equals_eager():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 128, generator=gen)
    w = torch.randn(64, 128, generator=gen) * 0.05
    compiled = torch.compile(ternary_int8_linear)
    assert rel(compiled(x, w), ternary_int8_linear(x, w)) < FWD_BOUND
