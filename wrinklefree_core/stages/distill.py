"""The distill stage: `wrinklefree train training=bitdistill_full`, BitDistill from the full-precision teacher.

Logits KD plus attention-relation KD (objectives/); the recipe must keep a KD objective, so a
`training=` override that drops both is refused before anything runs.
"""

from __future__ import annotations

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages.base import Section, register
from wrinklefree_core.stages.train import training_stage


def _check(cfg: RunConfig) -> str | None:
    objectives = cfg.training.objectives
    if objectives.logits_kd.enabled or objectives.attention_kd.enabled:
        return None
    return f"stage 'distill' needs a recipe with a KD objective (training=bitdistill_full); training={cfg.training.name} has none"


STAGE = register(
    training_stage(
        "distill",
        "BitNet checkpoint + teacher -> distilled checkpoint (training=bitdistill_full)",
        position=40,
        recipe="bitdistill_full",
        check=_check,
        sections=(
            Section("training", "The BitDistill recipe (configs/training/bitdistill_full.yaml); must keep a KD objective."),
            Section("data", "The stage's training data."),
        ),
    )
)
