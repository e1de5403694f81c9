"""The lrc stage: `wrinklefree train training=lrc_calibration`, low-rank corrections fitted to the teacher.

Only the LRC adapters train (training/inputs.py); the recipe must keep the lrc objective, so a
`training=` override that drops it is refused before anything runs.
"""

from __future__ import annotations

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages.base import Section, register
from wrinklefree_core.stages.train import training_stage


def _check(cfg: RunConfig) -> str | None:
    if cfg.training.objectives.lrc.enabled:
        return None
    return f"stage 'lrc' needs a recipe with the lrc objective (training=lrc_calibration); training={cfg.training.name} has none"


STAGE = register(
    training_stage(
        "lrc",
        "BitNet checkpoint + teacher -> checkpoint with LRC adapters (training=lrc_calibration)",
        position=30,
        recipe="lrc_calibration",
        check=_check,
        sections=(
            Section("training", "The LRC recipe (configs/training/lrc_calibration.yaml); must keep the lrc objective."),
            Section("data", "The calibration data."),
        ),
    )
)
