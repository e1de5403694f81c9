"""The convert stage: full-precision HF model -> BitNet checkpoint folder.

Steps: materialize the source model as an HF folder (cached; a gs:// `model=` folder is downloaded),
load it, swap attention/MLP linears for BitLinear and insert SubLN per `cfg.bitnet` (with
`bitnet.subln_init=calibrated`, SubLN gains fitted to the model's own activations on a few rows of
`data=`, models/subln_calibration.py; with `bitnet.init=gptq`, ternary weights rounded column by column
with error compensation through the layer inputs' Hessians on training rows, models/gptq_init.py), save the
checkpoint with its tokenizer and stage.json in one atomic rename, then publish it (a gs:// `out=` is
uploaded with its completion marker, see artifact_io.py). No training happens here; metrics describe
the conversion (parameter split, fraction of ternary zeros, time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint, save_bitnet_checkpoint
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.models.subln_calibration import apply_subln_gains, fit_subln_gains
from wrinklefree_core.models.sources import ModelSourceError, load_hf_model, materialize
from wrinklefree_core.quant.reference import ternarize_weight
from wrinklefree_core.stages.artifact_io import as_uris, local_inputs, plan_output
from wrinklefree_core.stages.manifest import MANIFEST_NAME, build_manifest, manifest_json
from wrinklefree_core.stages.output_guard import check_output
from wrinklefree_core.tracking.stage_run import now_ms, record_stage_run
from wrinklefree_core.tracking.store import check_store


@dataclass
class StageResult:
    """What a stage produced."""

    out: Path  # the artifact on this machine (for a gs:// output, the local copy that was uploaded)
    metrics: dict[str, float]
    uri: str = field(default="")  # where the artifact was published (gs://... or the local path)

    @property
    def location(self) -> str:
        """The published location, as the next stage should be given it."""
        return self.uri or str(self.out)


def default_out(cfg: RunConfig) -> Path:
    """Output folder used when `out=` is not given."""
    return Path("outputs") / f"{cfg.model.name}-bitnet"


def conversion_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Parameter split and ternary statistics of a converted model."""
    bit_params, zeros, n_bit = 0, 0, 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, BitLinear):
            n_bit += 1
            wq, _ = ternarize_weight(module.weight.detach())
            bit_params += wq.numel()
            zeros += int((wq == 0).sum())
            seen.add(id(module.weight))
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {
        "bitlinear_modules": n_bit,
        "ternary_params": bit_params,
        "full_precision_params": total - bit_params,
        "ternary_zero_fraction": zeros / max(bit_params, 1),
    }


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


def run_convert(cfg: RunConfig) -> StageResult:
    """Convert `cfg.model` to BitNet and write the checkpoint to `cfg.out` (local folder or gs://)."""
    target = plan_output(cfg, default_out(cfg))
    out = target.local
    if target.remote is None or target.mounted:
        check_output("convert", cfg, out, {"source model": cfg.model.path if cfg.model.source == "hf" else None})
    if out.exists() and not (is_bitnet_checkpoint(out) or (out.is_dir() and not any(out.iterdir()))):
        raise FileExistsError(
            f"out={out} exists and is not a WrinkleFree checkpoint; refusing to replace it. Choose another out= or remove it."
        )
    start = time.perf_counter()
    started_ms = now_ms()
    check_store(cfg)
    local_cfg, origins = local_inputs(cfg)
    if local_cfg.model.source == "hf" and is_bitnet_checkpoint(Path(local_cfg.model.path).expanduser()):
        raise ModelSourceError(f"{cfg.model.path} is already a BitNet checkpoint; pass the original HF model to convert")
    source = materialize(local_cfg.model)
    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_hf_model(source, dtype=dtype)
    calibration_batches: dict[str, torch.Tensor] = {}
    calibration = convert_for_run(model, tokenizer, cfg, calibration_batches)
    metrics = conversion_metrics(model) | calibration
    metrics["convert_seconds"] = time.perf_counter() - start
    inputs = as_uris({"source_model": str(source)}, origins)
    manifest = build_manifest("convert", cfg.model_dump(mode="json"), inputs, metrics)
    save_bitnet_checkpoint(model, out, cfg.bitnet, tokenizer=tokenizer, extra_files={MANIFEST_NAME: manifest_json(manifest)})
    result = StageResult(out=out, metrics=metrics, uri=target.publish(cfg.gcs))
    sources = ", ".join(src.path for src in cfg.data.sources)
    datasets = {f"{cfg.data.config_name}-{use}": (sources, rows) for use, rows in calibration_batches.items()}
    record_stage_run(cfg, "convert", target.uri, out, metrics, started_ms, {"calibration": datasets})
    return result
