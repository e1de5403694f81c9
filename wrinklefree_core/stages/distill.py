"""The distill stage: `wrinklefree train training=bitdistill_full`, BitDistill from the full-precision teacher.

Logits KD plus attention-relation KD (objectives/); the recipe must keep an objective tagged
`stage="distill"` (logits_kd, attention_kd), so a `training=` override that drops both is refused
before anything runs (stages/train.py: objective_check).
"""

from __future__ import annotations

from wrinklefree_core.stages.base import Section, register
from wrinklefree_core.stages.train import training_stage


STAGE = register(
    training_stage(
        "distill",
        "BitNet checkpoint + teacher -> distilled checkpoint (training=bitdistill_full)",
        position=40,
        recipe="bitdistill_full",
        sections=(
            Section("training", "The BitDistill recipe (configs/training/bitdistill_full.yaml); must keep a KD objective."),
            Section("data", "The stage's training data."),
        ),
    )
)
