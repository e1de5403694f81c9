"""The convert stage: full-precision HF model -> BitNet checkpoint folder.

Steps: materialize the source model as an HF folder (cached; a gs:// `model=` folder is downloaded),
load it, swap attention/MLP linears for BitLinear and insert SubLN per `cfg.bitnet` (with
`bitnet.subln_init=calibrated`, SubLN gains fitted to the model's own activations on a few rows of
`data=`, models/subln_calibration.py; with `bitnet.init=gptq`, ternary weights rounded column by column
with error compensation through the layer inputs' Hessians on training rows, models/gptq_init.py), save the
checkpoint with its tokenizer and stage.json in one atomic rename, then publish it (a gs:// `out=` is
uploaded with its completion marker, see artifacts/io.py). No training happens here; metrics describe
the conversion (parameter split, fraction of ternary zeros, time).
"""

from __future__ import annotations

import time
from pathlib import Path

from wrinklefree_core.artifacts.io import OutputTarget, as_uris, local_inputs, plan_output
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, build_manifest, manifest_json
from wrinklefree_core.artifacts.result import StageResult
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages.base import Section, Stage, register
from wrinklefree_core.storage.locks import output_lock
from wrinklefree_core.tracking.params import RUN_FIELDS
from wrinklefree_core.tracking.stage_run import now_ms, record_stage_run
from wrinklefree_core.tracking.store import check_store


def default_out(cfg: RunConfig) -> Path:
    """Output folder used when `out=` is not given."""
    return Path("outputs") / f"{cfg.model.name}-bitnet"


def conversion_metrics(model) -> dict[str, float]:
    """Parameter split and ternary statistics of a converted model."""
    from wrinklefree_core.models.bitlinear import BitLinear
    from wrinklefree_core.quant.reference import ternarize_weight

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


def run_convert(cfg: RunConfig) -> StageResult:
    """Convert `cfg.model` to BitNet and write the checkpoint to `cfg.out` (local folder or gs://)."""
    target = plan_output(cfg, default_out(cfg))
    with output_lock(target.folder, "convert", enabled=not target.mounted):
        return _convert(cfg, target)


def _convert(cfg: RunConfig, target: OutputTarget) -> StageResult:
    import torch

    from wrinklefree_core.artifacts.output_guard import check_output
    from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint, save_bitnet_checkpoint
    from wrinklefree_core.models.conversion import convert_for_run
    from wrinklefree_core.models.sources import ModelSourceError, load_hf_model, materialize

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
    result.summary = _summary(result)
    sources = ", ".join(src.path for src in cfg.data.sources)
    datasets = {f"{cfg.data.config_name}-{use}": (sources, rows) for use, rows in calibration_batches.items()}
    record_stage_run(cfg, STAGE.tracked, target.uri, out, metrics, started_ms, {"calibration": datasets})
    return result


def _summary(result: StageResult) -> str:
    m = result.metrics
    return (
        f"wrote BitNet checkpoint: {result.location}\n"
        f"  {int(m['bitlinear_modules'])} BitLinear modules, {int(m['ternary_params']):,} ternary + "
        f"{int(m['full_precision_params']):,} full-precision params, "
        f"{m['ternary_zero_fraction']:.1%} ternary zeros, {m['convert_seconds']:.1f} s"
    )


STAGE = register(
    Stage(
        name="convert",
        summary="HF model -> BitNet checkpoint (BitLinear + SubLN)",
        command="convert",
        run=run_convert,
        position=10,
        reads="model",
        logs=("model", "bitnet", "data", "training.seq_len", "compute", "gcs", *RUN_FIELDS),
        sections=(
            Section("bitnet", "How the model is converted: SubLN placement, target modules, skipped layers."),
            Section("compute", "Where the stage runs (backend, device, precision, SkyPilot resources)."),
        ),
        usage="HF model -> BitNet checkpoint folder (out=DIR)",
        announce=lambda cfg: f"converting model={cfg.model.name} (source={cfg.model.source}, subln={cfg.bitnet.subln}) ...",
    )
)
