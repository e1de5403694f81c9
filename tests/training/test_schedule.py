"""Warmup-stable-decay multipliers at hand-computed steps, and LambdaLR over MuonWithAdamW's groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wrinklefree_core.config.training import OptimizerConfig, ScheduleConfig
from wrinklefree_core.training.optimizers import build_optimizer
from wrinklefree_core.training.schedule import WSDSchedule, build_scheduler, wsd_lr_lambda, wsd_phase_steps

# max_steps=100, warmup 10% -> W=10, decay 20% -> D=20 (steps 80..99), min_lr_ratio 0.1.
LINEAR = [
    (0, 1 / 10),  # warmup starts at 1/W, not 0
    (4, 5 / 10),
    (9, 1.0),  # last warmup step reaches the peak
    (10, 1.0),
    (79, 1.0),
    (80, 1 - 0.9 * 1 / 20),  # first decay step: progress 1/20 -> 0.955
    (89, 1 - 0.9 * 10 / 20),  # halfway: 0.55
    (99, 0.1),  # last step reaches min_lr_ratio
    (150, 0.1),  # held afterwards
]


@pytest.mark.parametrize("step, expected", LINEAR)
def test_linear_wsd(step, expected):
    assert wsd_lr_lambda(step, 100, 0.1, 0.2, 0.1) == pytest.approx(expected, abs=1e-12)


def test_one_minus_sqrt_decay():
    # step 84: progress 5/20 = 0.25, sqrt = 0.5 -> 0.1 + 0.9 * (1 - 0.5) = 0.55
    assert wsd_lr_lambda(84, 100, 0.1, 0.2, 0.1, "1-sqrt") == pytest.approx(0.55)
    assert wsd_lr_lambda(99, 100, 0.1, 0.2, 0.1, "1-sqrt") == pytest.approx(0.1)
    assert wsd_lr_lambda(50, 100, 0.1, 0.2, 0.1, "1-sqrt") == 1.0


def test_phase_rounding_and_edges():
    assert wsd_phase_steps(10, 0.05, 0.25) == (1, 3)  # 0.5 and 2.5 round half up
    assert [wsd_lr_lambda(s, 10, 0.0, 0.0, 0.1) for s in (0, 9, 20)] == [1.0, 1.0, 1.0]  # no warmup, no decay
    assert [wsd_lr_lambda(s, 4, 0.5, 0.5, 0.0) for s in range(4)] == [0.5, 1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="sum to at most 1"):
        wsd_lr_lambda(0, 10, 0.6, 0.5, 0.1)
    with pytest.raises(ValueError, match="decay_shape"):
        WSDSchedule(10, 0.1, 0.2, 0.1, "cosine")


def test_scheduler_scales_every_group_of_muon_with_adamw():
    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 16))
    opt = build_optimizer(model, OptimizerConfig(type="muon", lr=1e-3, muon_lr=0.02))
    sched = build_scheduler(opt, ScheduleConfig(warmup_fraction=0.2, decay_fraction=0.4, min_lr_ratio=0.5), max_steps=10)
    # W=2, D=4 (steps 6..9): multipliers 0.5, 1, 1, 1, 1, 1, 0.875, 0.75, 0.625, 0.5
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5]
    seen = []
    for _ in range(10):
        seen.append({g["name"]: g["lr"] / g["peak_lr"] for g in opt.param_groups})
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()
    assert [s["muon"] for s in seen] == pytest.approx(expected)
    assert [s["adamw_no_decay"] for s in seen] == pytest.approx(expected)
    # The inner optimizers see the same lrs (shared group dicts).
    assert opt.inner["muon"].param_groups[0]["lr"] == pytest.approx(0.02 * 0.5)

    # The scheduler's state carries the schedule's settings and step count.
    state = sched.state_dict()
    fresh = build_scheduler(build_optimizer(model, OptimizerConfig(type="muon")), ScheduleConfig(), max_steps=10)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 10 and fresh.lr_lambdas[0].warmup_fraction == 0.2
