"""The training stages (train / lrc / distill): BitNet checkpoint (+ teacher) -> BitNet checkpoint.

One entry point for every training recipe; `training=` picks the recipe (unified, lrc_calibration,
bitdistill_full, stage2_pretrain) and the recipe's objectives decide the stage name recorded in
stage.json. The implementation lives in `wrinklefree_core/training/runner.py`; this module is the
stage-layer name the CLI and the pipeline tasks import, beside `stages/convert.py`.
"""

from __future__ import annotations

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.artifacts.result import StageResult


def run_train(cfg: RunConfig) -> StageResult:
    """Run the training recipe `cfg.training` and write the BitNet checkpoint to `cfg.out` (see training/runner.py)."""
    from wrinklefree_core.training.runner import run_train as _run

    return _run(cfg)
