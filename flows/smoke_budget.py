"""Smoke budgets of the full pipeline (`smoke=true`), read from configs/pipeline/smoke.yaml.

A smoke run has two jobs that need different budgets: on the tiny test models it exercises every
code path in seconds (tests, nightly-smoke), and on a real model (the README's main job on
SmolLM2-135M) it must return a model worth looking at within ~15 minutes on a 2-core laptop. So the
budget is chosen per source model: the YAML's entry named like the model option, else `default`.
A budget is override lists (common to every stage and the evaluation, then per stage) and the number
of held-out rows per source the eval table scores.
"""

from __future__ import annotations

from functools import cache

import yaml
from pydantic import BaseModel, ConfigDict, Field

from wrinklefree_core.config.compose import config_root

SMOKE_FILE = "pipeline/smoke.yaml"
STAGES_WITH_OWN_LIST = ("train", "lrc", "distill", "export")


class SmokeBudget(BaseModel):
    """The overrides a smoke run adds for one model."""

    model_config = ConfigDict(extra="forbid")

    common: list[str] = Field(default_factory=list, description="Overrides of every stage and of the evaluation.")
    train: list[str] = Field(default_factory=list, description="Overrides of the train stage.")
    lrc: list[str] = Field(default_factory=list, description="Overrides of the lrc stage.")
    distill: list[str] = Field(default_factory=list, description="Overrides of the distill stage.")
    export: list[str] = Field(default_factory=list, description="Overrides of the export stage.")
    eval_rows: int = Field(8, gt=0, description="Held-out rows per source the eval table scores.")

    def for_stage(self, stage: str) -> list[str]:
        """`common` then the stage's own list (the evaluation and convert only get `common`)."""
        return self.common + (getattr(self, stage) if stage in STAGES_WITH_OWN_LIST else [])


@cache
def _budgets() -> dict[str, SmokeBudget]:
    path = config_root() / SMOKE_FILE
    raw = yaml.safe_load(path.read_text()) or {}
    if "default" not in raw:
        raise ValueError(f"{path} needs a `default` budget")
    return {name: SmokeBudget.model_validate(entry) for name, entry in raw.items()}


def smoke_budget(model: str) -> SmokeBudget:
    """The smoke budget for the source model option `model` (an HF folder gets `default`)."""
    budgets = _budgets()
    return budgets.get(model, budgets["default"])
