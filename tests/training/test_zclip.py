"""ZClip on hand-computed sequences of gradient norms: warmup, EMA arithmetic, spikes, ceiling, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wrinklefree_core.training.zclip import NonFiniteGradientError, ZClip


def param_with_norm(norm: float) -> nn.Parameter:
    """A parameter whose gradient is (0.6 n, 0.8 n): total norm n."""
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = torch.tensor([0.6 * norm, 0.8 * norm], dtype=torch.float64)
    return p


def test_hand_computed_sequence():
    z = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=3, max_norm=100.0)

    # Warmup: norms 1, 3, 2 pass (below the ceiling); then mean = 2, var = (1 + 1 + 0) / 3.
    for n in (1.0, 3.0, 2.0):
        out = z.step([param_with_norm(n)])
        assert out == {"grad_norm": pytest.approx(n), "clipped_to": pytest.approx(n), "z": 0.0}
    mean, var = 2.0, 2.0 / 3.0
    assert z.mean == pytest.approx(mean) and z.var == pytest.approx(var) and z.buffer == []

    # 2.5 is no spike: z = 0.5 / sqrt(2/3) = 0.612; EMA takes the raw norm.
    out = z.step([param_with_norm(2.5)])
    assert out["z"] == pytest.approx(0.5 / (math.sqrt(var) + 1e-6))
    assert out["clipped_to"] == pytest.approx(2.5)
    mean = 0.5 * 2.0 + 0.5 * 2.5  # 2.25
    var = 0.5 * var + 0.5 * (2.5 - mean) ** 2  # 1/3 + 0.03125, with the updated mean
    assert z.mean == pytest.approx(2.25) and z.var == pytest.approx(1 / 3 + 0.03125)

    # 10 is a spike: z = 7.75 / 0.6038 = 12.8 > 2 -> clip to mean + 2 std; the EMA takes the clipped norm.
    std = math.sqrt(var)
    p = param_with_norm(10.0)
    out = z.step([p])
    threshold = mean + 2.0 * std  # 3.4576
    assert out["z"] == pytest.approx((10.0 - mean) / (std + 1e-6))
    assert out["clipped_to"] == pytest.approx(threshold)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(threshold)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8], dtype=torch.float64) * threshold)
    mean = 0.5 * mean + 0.5 * threshold
    var = 0.5 * var + 0.5 * (threshold - mean) ** 2
    assert z.mean == pytest.approx(mean) and z.var == pytest.approx(var)
    assert z.steps == 5


def test_ceiling_applies_in_warmup_and_after():
    z = ZClip(alpha=0.97, z_thresh=2.5, warmup_steps=2, max_norm=1.0)
    for n in (5.0, 7.0):
        p = param_with_norm(n)
        assert z.step([p])["clipped_to"] == 1.0
        assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0)
    assert (z.mean, z.var) == pytest.approx((6.0, 1.0))

    # 6.5 is no spike (z = 0.5) yet above the ceiling: clipped to 1.0, and the EMA takes the raw 6.5.
    out = z.step([param_with_norm(6.5)])
    assert out["clipped_to"] == 1.0 and out["z"] == pytest.approx(0.5 / (1.0 + 1e-6))
    assert z.mean == pytest.approx(0.97 * 6.0 + 0.03 * 6.5)


def test_module_input_and_state_dict_resume():
    norms = [1.0, 1.2, 0.9, 1.1, 1.0, 6.0, 1.05, 0.95, 9.0, 1.0]
    whole = ZClip(alpha=0.9, z_thresh=2.5, warmup_steps=4, max_norm=5.0)
    first = ZClip(alpha=0.9, z_thresh=2.5, warmup_steps=4, max_norm=5.0)
    expected = [whole.step([param_with_norm(n)]) for n in norms]
    got = [first.step([param_with_norm(n)]) for n in norms[:3]]  # split inside warmup
    resumed = ZClip(alpha=0.9, z_thresh=2.5, warmup_steps=4, max_norm=5.0)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.step([param_with_norm(n)]) for n in norms[3:]]
    assert got == expected
    assert any(e["clipped_to"] < e["grad_norm"] for e in expected)

    model = nn.Linear(3, 2)
    model(torch.ones(4, 3)).sum().backward()
    manual = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
    assert ZClip(max_norm=100.0).step(model)["grad_norm"] == pytest.approx(manual, rel=1e-6)


def test_non_finite_norm_raises_and_changes_nothing():
    z = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=1, max_norm=10.0)
    z.step([param_with_norm(1.0)])
    before = z.state_dict()
    model = nn.Linear(2, 2)
    model.weight.grad = torch.tensor([[1.0, float("inf")], [0.0, 0.0]])
    model.bias.grad = torch.tensor([1.0, 2.0])
    with pytest.raises(NonFiniteGradientError, match="weight"):
        z.step(model)
    assert z.state_dict() == before
    assert torch.equal(model.bias.grad, torch.tensor([1.0, 2.0]))
