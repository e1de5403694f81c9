"""LambdaWarmup: the schedule that ramps BitLinear's quant_lambda from full precision to ternary.

Design choices:
- The step counter lives in the scheduler object, which the training loop checkpoints with
  `state_dict()` next to the optimizer; it is never a process global, so a resumed run continues
  at exactly the lambda it stopped at.
- `state_dict()` also stores the settings, and `load_state_dict()` restores them: the checkpoint
  wins over a changed config, because changing the schedule mid-run would jump lambda.
- The training module writes `value` into every BitLinear with models.bitlinear.set_quant_lambda
  (in place, into 0-dim buffers, so a changing lambda never recompiles a compiled model); quant
  sits below models, so this module knows nothing of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal


KINDS = ("linear", "cosine")


@dataclass
class LambdaWarmup:
    """Quantization-blend schedule, advanced once per optimizer step.

    With t = min(step / warmup_steps, 1):
      linear: lambda = start + (end - start) * t
      cosine: lambda = start + (end - start) * (1 - cos(pi * t)) / 2
    warmup_steps = 0 means lambda = end from the first step (fully quantized at once with the
    default end = 1.0).
    """

    warmup_steps: int = 0
    kind: Literal["linear", "cosine"] = "linear"
    start: float = 0.0
    end: float = 1.0
    current_step: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def value(self) -> float:
        """Lambda at the current step."""
        if self.warmup_steps == 0:
            return float(self.end)
        t = min(self.current_step / self.warmup_steps, 1.0)
        if self.kind == "cosine":
            t = (1.0 - math.cos(math.pi * t)) / 2.0
        return float(self.start + (self.end - self.start) * t)

    def step(self) -> float:
        """Advance by one optimizer step; returns the new value."""
        self.current_step += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The settings and the step counter, as plain Python values."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore settings and step counter from `state_dict()` output."""
        self.warmup_steps = int(state["warmup_steps"])
        self.kind = state["kind"]
        self.start = float(state["start"])
        self.end = float(state["end"])
        self.current_step = int(state["current_step"])
        self.__post_init__()
