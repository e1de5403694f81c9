"""The lrc stage: `wrinklefree train training=lrc_calibration`, low-rank corrections fitted to the teacher.

Only the LRC adapters train (training/inputs.py); the recipe must keep an objective tagged
`stage="lrc"` (objectives/lrc_loss.py), so a `training=` override that drops it is refused before
anything runs (stages/train.py: objective_check).
"""

from __future__ import annotations

from wrinklefree_core.stages.base import Section, register
from wrinklefree_core.stages.train import training_stage


STAGE = register(
    training_stage(
        "lrc",
        "BitNet checkpoint + teacher -> checkpoint with LRC adapters (training=lrc_calibration)",
        position=30,
        recipe="lrc_calibration",
        sections=(
            Section("training", "The LRC recipe (configs/training/lrc_calibration.yaml); must keep the lrc objective."),
            Section("data", "The calibration data."),
        ),
    )
)
