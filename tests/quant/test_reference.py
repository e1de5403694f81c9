"""The torch reference quantizers against values worked out by hand, and the STE's gradient.

Inputs are chosen so that every intermediate is exact in fp32 (scales 1.0, 31.75, ...), which makes
the expected values exact too, including the .5 ties where half-to-even rounding matters.
"""

from __future__ import annotations

import pytest
import torch

from wrinklefree_core.quant import (
    ACT_EPS,
    WEIGHT_EPS,
    activation_quant_ref,
    activation_scale,
    quantize_activation,
    quantize_activation_ste,
    quantize_weight_ste,
    ternarize_weight,
    weight_quant_ref,
    weight_scale,
)


def test_weight_hand_computed():
    w = torch.tensor([[0.5, -1.5], [0.0, 2.0]])
    wq, s = ternarize_weight(w)
    # mean|W| = (0.5 + 1.5 + 0 + 2) / 4 = 1; round(0.5) = 0 (half-to-even), round(-1.5) = -2 -> -1, 2 -> 1
    assert s.item() == 1.0
    assert torch.equal(wq, torch.tensor([[0.0, -1.0], [0.0, 1.0]]))
    assert torch.equal(weight_quant_ref(w), torch.tensor([[0.0, -1.0], [0.0, 1.0]]))


def test_weight_scale_multiplies_back():
    w = torch.tensor([1.0, -0.25, 0.75, 0.0])  # mean|W| = 0.5: W/s = [2, -0.5, 1.5, 0]
    wq, s = ternarize_weight(w)
    assert s.item() == 0.5
    assert torch.equal(wq, torch.tensor([1.0, -0.0, 1.0, 0.0]))
    assert torch.equal(weight_quant_ref(w), torch.tensor([0.5, 0.0, 0.5, 0.0]))


def test_weight_ties_round_half_to_even():
    # s = 1, so W/s hits the ties exactly: 0.5 -> 0 and -0.5 -> 0 (half-away-from-zero would give +-1).
    w = torch.tensor([0.5, -0.5, 1.5, -1.5])
    wq, s = ternarize_weight(w)
    assert s.item() == 1.0
    assert torch.equal(wq, torch.tensor([0.0, 0.0, 1.0, -1.0]))


def test_activation_hand_computed():
    x = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
    # max|x| = 4: s = 127/4 = 31.75; x*s = [31.75, -63.5, 15.875, 127] -> [32, -64, 16, 127]
    xq, s = quantize_activation(x)
    assert s.item() == 31.75
    assert torch.equal(xq, torch.tensor([[32.0, -64.0, 16.0, 127.0]]))
    assert torch.equal(activation_quant_ref(x), torch.tensor([[32.0, -64.0, 16.0, 127.0]]) / 31.75)


def test_activation_ties_round_half_to_even():
    # max|x| = 127 gives s = 1, so x*s = x and the ties are exact.
    x = torch.tensor([127.0, 2.5, -2.5, 3.5, 0.5, -0.5, 126.5])
    xq, s = quantize_activation(x)
    assert s.item() == 1.0
    assert torch.equal(xq, torch.tensor([127.0, 2.0, -2.0, 4.0, 0.0, 0.0, 126.0]))


def test_activation_scale_is_per_token():
    x = torch.tensor([[[1.0, -4.0], [0.25, 0.5]], [[-127.0, 3.0], [8.0, 1.0]]])
    assert torch.equal(activation_scale(x), torch.tensor([[[31.75], [254.0]], [[1.0], [15.875]]]))


def test_eps_clamps_all_zero_inputs():
    w = torch.zeros(3, 4)
    wq, s = ternarize_weight(w)
    assert s.item() == pytest.approx(WEIGHT_EPS)
    assert torch.equal(wq, torch.zeros(3, 4)) and torch.equal(weight_quant_ref(w), w)

    x = torch.zeros(2, 5)
    xq, sx = quantize_activation(x)
    assert torch.equal(sx, (1.0 / torch.tensor(ACT_EPS)) * 127.0 * torch.ones(2, 1))
    assert torch.equal(xq, x) and torch.equal(activation_quant_ref(x), x)


def test_eps_bounds_the_activation_scale():
    # max|x| = 1e-7 < eps: the scale is 127 / eps, so 1e-7 * 127e5 = 1.27 -> 1, not 127.
    x = torch.tensor([1e-7, 0.0])
    xq, _ = quantize_activation(x)
    assert torch.equal(xq, torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_output_dtypes(dtype):
    w = torch.randn(8, 16).to(dtype)
    x = torch.randn(3, 16).to(dtype)
    assert weight_quant_ref(w).dtype == dtype
    assert activation_quant_ref(x).dtype == dtype
    assert quantize_weight_ste(w, 0.5).dtype == dtype
    assert quantize_activation_ste(x, torch.tensor(0.5)).dtype == dtype
    # the scales and integer grids stay fp32
    assert weight_scale(w).dtype == torch.float32 and ternarize_weight(w)[0].dtype == torch.float32
    assert quantize_activation(x)[0].dtype == torch.float32


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_ste_gradient_is_identity(lam, as_tensor):
    lam = torch.tensor(lam) if as_tensor else lam
    torch.manual_seed(0)
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(2, 3, 16, requires_grad=True)
    gw, gx = torch.randn(8, 16), torch.randn(2, 3, 16)
    quantize_weight_ste(w, lam).backward(gw)
    quantize_activation_ste(x, lam).backward(gx)
    assert torch.equal(w.grad, gw)
    assert torch.equal(x.grad, gx)


def test_lambda_zero_is_exactly_the_input():
    torch.manual_seed(1)
    w, x = torch.randn(8, 16), torch.randn(4, 16) * 5
    assert torch.equal(quantize_weight_ste(w, torch.tensor(0.0)), w)
    assert torch.equal(quantize_activation_ste(x, torch.tensor(0.0)), x)


def test_lambda_one_is_the_quantized_value():
    # x + (q - x) need not round to q bit for bit, so compare to fp32 precision of the operands.
    torch.manual_seed(2)
    w, x = torch.randn(32, 64), torch.randn(4, 64) * 5
    torch.testing.assert_close(quantize_weight_ste(w, torch.tensor(1.0)), weight_quant_ref(w), rtol=0, atol=1e-6)
    torch.testing.assert_close(quantize_activation_ste(x, torch.tensor(1.0)), activation_quant_ref(x), rtol=0, atol=1e-5)
    # on the exact hand-computed inputs it is exact
    w = torch.tensor([[0.5, -1.5], [0.0, 2.0]])
    assert torch.equal(quantize_weight_ste(w, 1.0), weight_quant_ref(w))


def test_lambda_blends_linearly():
    w = torch.tensor([[0.5, -1.5], [0.0, 2.0]])  # quantized: [[0, -1], [0, 1]]
    assert torch.equal(quantize_weight_ste(w, 0.5), torch.tensor([[0.25, -1.25], [0.0, 1.5]]))
