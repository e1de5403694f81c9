"""The objective registry: each loss term is one file in this package that calls `register(Objective(...))`.

An Objective says what the rest of the code needs to know of one loss term: its name (the key of
`training.objectives.<name>` and of the logged part), which forwards and captures a step must run
for it (`needs`), which LossInputs fields its loss reads, the loss itself, and the pipeline stage a
recipe with it enabled belongs to (`stage`: lrc, distill). The manager, the stage naming and the
lrc/distill recipe checks read this table.

Design choices:
- The order of the objectives is the order of `ObjectivesConfig`'s fields (config/training.py, the
  bottom layer, which holds each objective's enabled/weight switch): the manager sums the weighted
  parts in that order, so it stays what it was. tests/objectives/test_registry.py holds the two lists
  equal, so a new objective is its file plus its one config field.
- `needs` names are the fields of Requirements: the training module asks for exactly those forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from wrinklefree_core.config.training import OBJECTIVE_NAMES
from wrinklefree_core.registry import Registry


@dataclass(frozen=True)
class Requirements:
    """Which forwards and captures a step needs."""

    teacher: bool
    hidden_states: bool
    qkv: bool
    dlm_forward: bool

    @classmethod
    def of(cls, names: Sequence[str]) -> "Requirements":
        """What the objectives `names` need together."""
        needs = set().union(*(get(n).needs for n in names)) if names else set()
        return cls(**{f.name: f.name in needs for f in fields(cls)})


NEEDS = frozenset(f.name for f in fields(Requirements))


@dataclass
class LossInputs:
    """Everything one step computed; fields no active objective needs may stay None.

    Shapes: ids/labels/attention_mask (B, L); logits (B, L, V); hidden states as HF's
    output_hidden_states tuple; qkv as recorded by capture_qkv; dlm_* as returned by dlm_inputs and
    the student forward on the noisy ids.
    """

    input_ids: torch.Tensor
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    hidden_states: Sequence[torch.Tensor] | None = None
    qkv: dict[str, torch.Tensor] | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_hidden_states: Sequence[torch.Tensor] | None = None
    teacher_qkv: dict[str, torch.Tensor] | None = None
    dlm_logits: torch.Tensor | None = None
    dlm_mask: torch.Tensor | None = None
    dlm_t: torch.Tensor | None = None
    dlm_maskable: torch.Tensor | None = None


# loss(inputs, valid positions (B, L) or None, settings): settings has the run's `dlm`, `kd`, `lrc` sections.
LossFn = Callable[[LossInputs, "torch.Tensor | None", Any], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One loss term (module docstring)."""

    name: str
    summary: str
    loss: LossFn
    reads: tuple[str, ...]  # the LossInputs fields the loss needs (checked before it runs)
    needs: frozenset[str] = frozenset()  # Requirements fields: forwards and captures a step runs for it
    stage: str | None = None  # the pipeline stage a recipe with this objective enabled is (None: train)

    def __post_init__(self) -> None:
        unknown = sorted(self.needs - NEEDS)
        if unknown:
            raise ValueError(f"objective '{self.name}' needs {unknown}; known needs: {sorted(NEEDS)}")

    def __call__(self, inputs: LossInputs, valid: torch.Tensor | None, settings: Any) -> torch.Tensor:
        missing = [f for f in self.reads if getattr(inputs, f) is None]
        if missing:
            raise ValueError(f"objective '{self.name}' is active but LossInputs lacks {missing}")
        return self.loss(inputs, valid, settings)


_OBJECTIVES: Registry[Objective] = Registry(__package__, "objective", skip=("base", "manager"))


def register(objective: Objective) -> Objective:
    """Add `objective` to the registry (each objective file calls this once, at import)."""
    return _OBJECTIVES.add(objective.name, objective)


def unregister(name: str) -> None:
    """Remove an objective (tests that register a toy one clean up with this)."""
    _OBJECTIVES.remove(name)


def registry() -> dict[str, Objective]:
    """Every registered objective: the config's order first, then any others by name."""
    order = {name: i for i, name in enumerate(OBJECTIVE_NAMES)}
    return dict(sorted(_OBJECTIVES.entries().items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def get(name: str) -> Objective:
    """The objective called `name`; ValueError naming the ones there are."""
    objectives = registry()
    if name not in objectives:
        raise ValueError(f"unknown objective '{name}'; objectives: {', '.join(objectives)}")
    return objectives[name]


def stages_of(enabled: Sequence[str]) -> list[str]:
    """The pipeline stages that the enabled objectives tag (lrc, distill), in objective order."""
    return [get(n).stage for n in enabled if get(n).stage]
