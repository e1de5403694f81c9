"""BitLinear against nn.Linear and against an independent fake-quant forward written out here.

At lam = 0 the layer must be nn.Linear bit for bit. At lam = 1 its forward is x + (Q(x) - x), which
can differ from Q(x) in the last ulp, so the comparison with F.linear(Q(x), Q(W), b) allows fp32
rounding only. The helpers below follow the computation order that reference.py defines
(127 / max, then x * s; W / s), so that no element lands on the other side of a .5 boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrinklefree_core.models.bitlinear import BitLinear, set_quant_lambda
from wrinklefree_core.models.subln import SubLN


def _ternary(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary weight, written independently of wrinklefree_core.quant."""
    s = w.abs().mean().clamp(min=1e-5)
    return torch.clamp(torch.round(w / s), -1, 1) * s


def _int8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 activation, written independently of wrinklefree_core.quant."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return torch.clamp(torch.round(x * s), -128, 127) / s


def _layer(bias: bool = True, sub_norm_eps: float | None = None, lam: float = 1.0, seed: int = 0) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(48, 24, bias=bias, sub_norm_eps=sub_norm_eps, quant_lambda=lam)
    if layer.sub_norm is not None:
        with torch.no_grad():
            layer.sub_norm.weight.copy_(1.0 + 0.3 * torch.randn(48))
    return layer


def test_lambda_zero_without_sub_norm_is_nn_linear():
    layer = _layer(lam=0.0)
    linear = nn.Linear(48, 24)
    linear.load_state_dict(layer.state_dict())
    x = torch.randn(3, 5, 48)
    assert torch.equal(layer(x), linear(x))


def test_lambda_one_is_quantized_linear():
    layer = _layer()
    x = torch.randn(3, 5, 48) * 2
    expected = F.linear(_int8_per_token(x), _ternary(layer.weight.detach()), layer.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_sub_norm_runs_before_quantization():
    layer = _layer(sub_norm_eps=1e-6)
    norm = SubLN(48, 1e-6)
    norm.load_state_dict(layer.sub_norm.state_dict())
    x = torch.randn(4, 48) * 3
    w = layer.weight.detach()
    with torch.no_grad():
        h = norm(x)
        expected = F.linear(_int8_per_token(h), _ternary(w), layer.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        set_quant_lambda(layer, 0.0)
        assert torch.equal(layer(x), F.linear(h, w, layer.bias))


def test_gradients_reach_weight_bias_and_sub_norm():
    layer = _layer(sub_norm_eps=1e-6, lam=1.0)
    x = torch.randn(2, 6, 48)
    g = torch.randn(2, 6, 24)
    layer(x).backward(g)
    for p in (layer.weight, layer.bias, layer.sub_norm.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # STE: the weight gradient is the one of a linear layer whose input is the quantized activation
    with torch.no_grad():
        xq = _int8_per_token(layer.sub_norm(x))
    torch.testing.assert_close(layer.weight.grad, g.reshape(-1, 24).t() @ xq.reshape(-1, 48), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, g.sum((0, 1)))


def test_from_linear_shares_storage():
    linear = nn.Linear(48, 24, bias=True)
    layer = BitLinear.from_linear(linear, sub_norm_eps=1e-5, quant_lambda=0.5)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert layer.weight.data_ptr() == linear.weight.data_ptr()
    with torch.no_grad():
        linear.weight[0, 0] = 123.0
    assert layer.weight[0, 0].item() == 123.0
    assert layer.quant_lambda.item() == 0.5 and layer.quant_lambda.device == linear.weight.device
    assert layer.sub_norm.weight.dtype == linear.weight.dtype and torch.equal(layer.sub_norm.weight, torch.ones(48))


def test_state_dict_keys_match_nn_linear():
    assert set(_layer().state_dict()) == {"weight", "bias"}  # quant_lambda is not persistent
    assert set(_layer(sub_norm_eps=1e-5).state_dict()) == {"weight", "bias", "sub_norm.weight"}
    assert set(_layer(bias=False).state_dict()) == {"weight"}


def test_quant_lambda_stays_fp32_under_dtype_casts():
    """model.to(bf16) must not round the warmup value (0.3 would become 0.30078 in bf16)."""
    from wrinklefree_core.models.bitlinear import set_quant_lambda

    layer = BitLinear(256, 32)
    set_quant_lambda(layer, 0.3)
    layer = layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16
    assert layer.quant_lambda.dtype == torch.float32
    assert layer.quant_lambda.item() == torch.tensor(0.3).item()
    assert layer(torch.randn(2, 256, dtype=torch.bfloat16)).dtype == torch.bfloat16
