"""Warmup-stable-decay (WSD) learning-rate schedule as a LambdaLR multiplier.

WSD (Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training
Strategies", 2024; Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations", 2024): linear warmup, a long constant phase, then a short decay. The constant phase means
a run can be extended, or a checkpoint branched into its own decay, without re-tuning.

Design choices:
- A multiplier, not an lr: LambdaLR multiplies each param group's own initial lr, so AdamW groups and
  Muon groups (whose peaks differ by ~40x) follow the same shape from their own `peak_lr`.
- The multiplier for step s is the lr of the update made at step s (LambdaLR's convention: step 0 is
  the first optimizer step). Warmup is (s + 1) / W for s < W: it starts at 1/W rather than 0, so no
  step is wasted with lr 0, and reaches exactly 1 at s = W - 1.
- Decay covers the last D steps and reaches min_lr_ratio exactly at the last step (s = max_steps - 1):
  progress p = (s - (max_steps - D) + 1) / D. "linear" (default) gives 1 - (1 - m) p; "1-sqrt"
  (Hägele et al. report it beats linear) gives m + (1 - m)(1 - sqrt(p)). After max_steps the
  multiplier holds at min_lr_ratio (at 1 when there is no decay phase).
- W and D are fractions of max_steps rounded half up; fractions summing to more than 1 are refused,
  and rounding never lets warmup and decay overlap.
- The lambda is a small dataclass, not a closure, so LambdaLR's state_dict() saves its settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from wrinklefree_core.config.training import ScheduleConfig

DecayShape = Literal["linear", "1-sqrt"]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def wsd_phase_steps(max_steps: int, warmup_fraction: float, decay_fraction: float) -> tuple[int, int]:
    """(warmup steps W, decay steps D) for a run of `max_steps` optimizer steps."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if warmup_fraction < 0 or decay_fraction < 0 or warmup_fraction + decay_fraction > 1 + 1e-9:
        raise ValueError(
            f"warmup_fraction ({warmup_fraction}) and decay_fraction ({decay_fraction}) must be >= 0 and sum to at most 1"
        )
    warmup = min(_round_half_up(warmup_fraction * max_steps), max_steps)
    decay = min(_round_half_up(decay_fraction * max_steps), max_steps - warmup)
    return warmup, decay


def wsd_lr_lambda(
    step: int,
    max_steps: int,
    warmup_fraction: float,
    decay_fraction: float,
    min_lr_ratio: float,
    decay_shape: DecayShape = "linear",
) -> float:
    """LR multiplier of optimizer step `step` (0-based) under warmup-stable-decay (module docstring)."""
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup, decay = wsd_phase_steps(max_steps, warmup_fraction, decay_fraction)
    if step < warmup:
        return (step + 1) / warmup
    decay_start = max_steps - decay
    if step < decay_start or decay == 0:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay)
    if decay_shape == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if decay_shape == "1-sqrt":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - math.sqrt(progress))
    raise ValueError(f"unknown decay_shape {decay_shape!r}; choose 'linear' or '1-sqrt'")


@dataclass
class WSDSchedule:
    """Picklable WSD multiplier for LambdaLR (its fields are saved in the scheduler's state_dict)."""

    max_steps: int
    warmup_fraction: float
    decay_fraction: float
    min_lr_ratio: float
    decay_shape: DecayShape = "linear"

    def __post_init__(self) -> None:
        # Fail at construction, not at the first step.
        self(0)
        if self.decay_shape not in ("linear", "1-sqrt"):
            raise ValueError(f"unknown decay_shape {self.decay_shape!r}; choose 'linear' or '1-sqrt'")

    def __call__(self, step: int) -> float:
        return wsd_lr_lambda(
            step, self.max_steps, self.warmup_fraction, self.decay_fraction, self.min_lr_ratio, self.decay_shape
        )


def build_scheduler(
    optimizer: Optimizer, cfg: ScheduleConfig, max_steps: int, *, decay_shape: DecayShape = "linear"
) -> LambdaLR:
    """LambdaLR applying the WSD multiplier to every param group of `optimizer` (MuonWithAdamW included).

    Each group's lr becomes its initial lr (its peak) times the multiplier; call `scheduler.step()`
    once after every optimizer step.
    """
    schedule = WSDSchedule(max_steps, cfg.warmup_fraction, cfg.decay_fraction, cfg.min_lr_ratio, decay_shape)
    return LambdaLR(optimizer, lr_lambda=schedule)
