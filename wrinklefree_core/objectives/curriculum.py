"""Curriculum: objective weights as a function of training progress.

A curriculum is a list of phases, each `{until: fraction of max_steps, weights: {objective: w}}`
in increasing `until`. Phase k covers progress p = step / max_steps in (until_{k-1}, until_k]
(the first phase starts at 0), and its weights are the values *reached at its end*:

- `step`: phase k's weights hold for the whole phase (a jump at each boundary);
- `linear`: within phase k, w(p) = w_{k-1} + f * (w_k - w_{k-1}) with f = (p - until_{k-1}) / (until_k - until_{k-1});
- `cosine`: the same with f replaced by (1 - cos(pi f)) / 2, which starts and ends the ramp gently.

The first phase has no predecessor and is constant under every interpolation; after the last
phase its weights hold. With no phases, the weights are the configured constants.

Design choices:
- Progress is a fraction of max_steps, as in the config, so a recipe keeps its shape when the run
  length changes (the same convention as the LR schedule's warmup/decay fractions).
- An objective a phase does not name keeps its configured weight (`objectives.<name>.weight`), so a
  phase lists only what it changes; a disabled objective is 0 whatever a phase says, so switching
  one off never needs the curriculum edited.
- Plain Python floats, no tensors: the weights are computed on the host once per step and never
  cause a device sync or a recompile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from wrinklefree_core.config.training import CurriculumPhase, TrainingConfig

INTERPOLATIONS = ("step", "linear", "cosine")


class Curriculum:
    """Per-objective weights at any step, from phases, an interpolation and the constant weights."""

    def __init__(
        self,
        phases: Sequence[CurriculumPhase],
        interpolation: str,
        base_weights: Mapping[str, float],
        disabled: Sequence[str] = (),
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose from {list(INTERPOLATIONS)}")
        untils = [p.until for p in phases]
        if any(b <= a for a, b in zip(untils, untils[1:])):
            raise ValueError(f"curriculum phases must have strictly increasing `until`, got {untils}")
        unknown = sorted({name for p in phases for name in p.weights} - set(base_weights))
        if unknown:
            raise ValueError(f"curriculum names unknown objectives {unknown}; known: {sorted(base_weights)}")
        self.interpolation = interpolation
        self.untils = untils
        self.base_weights = {name: (0.0 if name in disabled else float(w)) for name, w in base_weights.items()}
        # Resolve each phase to a full weight table once.
        self.tables = [
            {name: (0.0 if name in disabled else float(p.weights.get(name, w))) for name, w in base_weights.items()}
            for p in phases
        ]

    @classmethod
    def from_config(cls, training: TrainingConfig) -> "Curriculum":
        """Build from `training.curriculum` and `training.objectives`."""
        objectives = training.objectives
        base = {name: getattr(objectives, name).weight for name in type(objectives).model_fields}
        disabled = [name for name in base if not getattr(objectives, name).enabled]
        return cls(training.curriculum.phases, training.curriculum.interpolation, base, disabled)

    def weights_at(self, step: int, max_steps: int) -> dict[str, float]:
        """Weight of every objective at optimizer step `step` of `max_steps` (disabled ones are 0)."""
        if max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {max_steps}")
        if not self.tables:
            return dict(self.base_weights)
        progress = min(max(step / max_steps, 0.0), 1.0)
        k = next((i for i, until in enumerate(self.untils) if progress <= until), None)
        if k is None:
            return dict(self.tables[-1])
        if k == 0 or self.interpolation == "step":
            return dict(self.tables[k])
        start, end = self.untils[k - 1], self.untils[k]
        f = (progress - start) / (end - start)
        if self.interpolation == "cosine":
            f = (1.0 - math.cos(math.pi * f)) / 2.0
        prev, cur = self.tables[k - 1], self.tables[k]
        return {name: prev[name] + f * (cur[name] - prev[name]) for name in cur}
