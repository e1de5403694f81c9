"""A loaded full-precision model converted as a run asks: SubLN (calibrated when set), BitLinear, GPTQ start.

What `wrinklefree convert` and a training stage that starts from an HF folder both do to the model
in memory: fit SubLN gains on the model's own activations (`bitnet.subln_init=calibrated`), swap
the linears for BitLinear (models/convert.py), then, with `bitnet.init=gptq`, round the ternary
weights with error compensation (models/gptq_init.py). Calibration rows are training rows of the
run's data, drawn as training draws them.
"""

from __future__ import annotations

import torch

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.models.subln_calibration import apply_subln_gains, fit_subln_gains


def calibration_rows(cfg: RunConfig, tokenizer, rows: int | None = None) -> torch.Tensor:
    """`rows` (default `cfg.bitnet.subln_calibration_rows`) training rows of `cfg.data`, drawn as training would draw them."""
    from wrinklefree_core.data.corpora import CorpusError
    from wrinklefree_core.data.datamodule_core import build_datasets
    from wrinklefree_core.data.documents import DataSourceError

    try:
        mixture, _ = build_datasets(cfg.data, tokenizer, cfg.training.seq_len)
    except (DataSourceError, CorpusError) as exc:
        raise DataSourceError(
            f"{exc}\nCalibration (bitnet.subln_init=calibrated, bitnet.init=gptq) reads the run's data "
            f"(data={cfg.data.config_name}): choose data that is available, or convert without calibration: "
            "bitnet.subln_init=ones bitnet.init=rtn"
        ) from exc
    return mixture.sample(rows or cfg.bitnet.subln_calibration_rows)["input_ids"]


def convert_for_run(
    model: torch.nn.Module, tokenizer, cfg: RunConfig, calibration: dict[str, torch.Tensor] | None = None
) -> dict[str, float]:
    """Convert a loaded full-precision model in place per `cfg.bitnet`, calibrating SubLN when asked; returns metrics.

    The token rows each calibration read are put in `calibration` (by use), for the run's dataset record.
    """
    gains: dict[str, torch.Tensor] = {}
    rows = 0
    calibration = {} if calibration is None else calibration
    if cfg.bitnet.subln_init == "calibrated" and cfg.bitnet.subln != "none":
        batch = calibration_rows(cfg, tokenizer)
        gains = fit_subln_gains(model, cfg.bitnet, batch)
        rows = batch.shape[0]
        calibration["subln"] = batch
    convert_to_bitnet(model, cfg.bitnet)
    apply_subln_gains(model, gains)
    metrics = {"subln_calibration_rows": float(rows)}
    if cfg.bitnet.init == "gptq":
        from wrinklefree_core.models.gptq_init import gptq_initialize

        eos = tokenizer.eos_token_id
        batch = calibration_rows(cfg, tokenizer, cfg.bitnet.init_calibration_rows)
        calibration["gptq"] = batch
        metrics |= gptq_initialize(model, batch, damping=cfg.bitnet.init_damping, eos_token_id=eos)
    return metrics
