"""LambdaWarmup: schedule values, checkpoint round trip, and writing into BitLinear modules."""

from __future__ import annotations

import math

import pytest
from torch import nn

from wrinklefree_core.models.bitlinear import BitLinear, set_quant_lambda
from wrinklefree_core.quant import LambdaWarmup


def _advance(sched: LambdaWarmup, n: int) -> LambdaWarmup:
    for _ in range(n):
        sched.step()
    return sched


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (25, 1.0)])
def test_linear_values(step, expected):
    assert _advance(LambdaWarmup(warmup_steps=10), step).value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (2, (1 - math.cos(math.pi / 4)) / 2), (4, 0.5), (8, 1.0), (9, 1.0)])
def test_cosine_values(step, expected):
    assert _advance(LambdaWarmup(warmup_steps=8, kind="cosine"), step).value == pytest.approx(expected, abs=1e-12)


def test_start_and_end():
    sched = LambdaWarmup(warmup_steps=4, start=0.2, end=0.6)
    assert sched.value == pytest.approx(0.2)
    assert _advance(sched, 2).value == pytest.approx(0.4)
    assert _advance(sched, 10).value == pytest.approx(0.6)


def test_zero_warmup_is_fully_quantized_at_once():
    sched = LambdaWarmup(warmup_steps=0)
    assert sched.value == 1.0
    assert sched.step() == 1.0


def test_invalid_settings():
    with pytest.raises(ValueError):
        LambdaWarmup(warmup_steps=10, kind="exp")
    with pytest.raises(ValueError):
        LambdaWarmup(warmup_steps=-1)


def test_state_dict_round_trip_resumes_at_the_same_value():
    sched = _advance(LambdaWarmup(warmup_steps=100, kind="cosine", start=0.1), 37)
    state = sched.state_dict()
    resumed = LambdaWarmup()  # defaults differ: everything comes from the state
    resumed.load_state_dict(state)
    assert resumed == sched and resumed.value == sched.value
    assert resumed.step() == sched.step()
    # plain Python values, so it can go into any checkpoint format
    assert all(isinstance(v, (int, float, str)) for v in state.values())


def test_the_value_goes_into_every_bitlinear_in_place():
    model = nn.Sequential(BitLinear(8, 16), nn.ReLU(), nn.Sequential(BitLinear(16, 4, bias=True)), nn.Linear(4, 2))
    buffers = [m.quant_lambda for m in model.modules() if isinstance(m, BitLinear)]
    ptrs = [b.data_ptr() for b in buffers]
    sched = _advance(LambdaWarmup(warmup_steps=4), 1)
    set_quant_lambda(model, sched.value)
    for m in model.modules():
        if isinstance(m, BitLinear):
            assert m.quant_lambda.item() == 0.25
    # written in place: a compiled model keeps reading the same buffers
    assert [m.quant_lambda.data_ptr() for m in model.modules() if isinstance(m, BitLinear)] == ptrs
    set_quant_lambda(model, _advance(sched, 3).value)
    assert all(b.item() == 1.0 for b in buffers)
    assert not hasattr(model[3], "quant_lambda")
