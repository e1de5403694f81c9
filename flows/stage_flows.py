"""One flow per stage, for running or re-running a single stage from the Prefect UI or CLI.

Each takes the upstream artifact URI as a parameter (convert: an optional HF model folder instead
of `model`), the stage's config sections as typed parameters (flows/stage_params.py: the UI shows
them as a validated form whose defaults are the stage's recipe), raw `overrides` for what the form
cannot say, and the same out root / tracking / smoke settings as the full pipeline. The overrides
are built exactly as the pipeline builds them (`PipelineParams.overrides_for`), so re-running a
stage with the pipeline's settings is a cache hit, and changing a field reruns only that stage.
`parent_run_id` nests the stage's MLflow run under an existing pipeline run (its id is in
`<out_root>/pipeline.json`); left empty, the stage run is a top-level MLflow run.

When `model` is empty, the model config is read from the upstream checkpoint's stage.json, so names
(MLflow run, GGUF file) follow the model the checkpoint came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.params import PipelineParams
from flows.sections import StageSections, recipe_value
from flows.stage_params import (
    ConvertBitNet,
    ConvertCompute,
    ConvertModel,
    ConvertParams,
    DistillCompute,
    DistillData,
    DistillParams,
    DistillTraining,
    ExportCompute,
    ExportParams,
    ExportSection,
    LrcCompute,
    LrcData,
    LrcParams,
    LrcTraining,
    TrainCompute,
    TrainData,
    TrainParams,
    TrainTraining,
)
from tasks.stage_plan import DEFAULT_OUT_ROOT
from tasks.stage_task import call_stage
from wrinklefree_core.config import group_options


def model_from_upstream(upstream_uri: str | None) -> str | None:
    """`model=` value matching a local checkpoint's stage.json (a config option name or an HF folder)."""
    if not upstream_uri or upstream_uri.startswith("gs://") or not (Path(upstream_uri) / "stage.json").is_file():
        return None
    from wrinklefree_core.stages.manifest import read_manifest

    model = read_manifest(upstream_uri).config.get("model", {})
    if model.get("name") in group_options("model"):
        return model["name"]
    return model.get("path") or None


def run_single_stage(
    stage: str,
    upstream_uri: str | None,
    form: StageSections,
    model: str | None,
    smoke: bool,
    out_root: str,
    tracking_uri: str | None,
    experiment: str,
    parent_run_id: str | None,
    refresh: bool,
) -> dict[str, Any]:
    """Run `stage` with the pipeline's override rules; returns the stage result with `cached`."""
    model = model or model_from_upstream(upstream_uri) or "smollm2_135m"
    params = PipelineParams(
        model=model, smoke=smoke, out_root=out_root, tracking_uri=tracking_uri, experiment=experiment, **{stage: form}
    )
    result, cached = call_stage(stage, params.overrides_for(stage), upstream_uri, parent_run_id, out_root, refresh)
    result["cached"] = cached
    print(f"{stage}: {'cache hit' if cached else 'ran'} -> {result['uri']}")
    return result


# Prefect copies parameters per run, so the mutable `overrides` defaults below are never shared (B006).


@flow(name="convert", log_prints=True)
def convert_flow(
    model: str = "smollm2_135m",
    upstream_uri: str | None = None,
    model_settings: ConvertModel = recipe_value("convert", "model"),
    bitnet: ConvertBitNet = recipe_value("convert", "bitnet"),
    compute: ConvertCompute = recipe_value("convert", "compute"),
    overrides: list[str] = [],  # noqa: B006
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """HF model (config name, or `upstream_uri` = an HF folder) -> BitNet checkpoint.

    Args:
        model: configs/model option (tiny_llama, smollm2_135m, ...).
        upstream_uri: an HF model folder to convert instead of `model`.
        model_settings: the source model's settings; changed fields apply on top of `model`'s config.
        bitnet: conversion settings (SubLN placement, target modules, skipped layers).
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after the fields, e.g. `training=stage2_pretrain`.
        smoke: the pipeline's tiny budget (applies to fields left at the recipe's value).
        out_root: where outputs go (<out_root>/<stage>/<key>); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's, from <out_root>/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = ConvertParams(model_settings=model_settings, bitnet=bitnet, compute=compute, overrides=overrides)
    return run_single_stage("convert", upstream_uri, form, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="train", log_prints=True)
def train_flow(
    upstream_uri: str,
    training: TrainTraining = recipe_value("train", "training"),
    data: TrainData = recipe_value("train", "data"),
    compute: TrainCompute = recipe_value("train", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint -> trained checkpoint (training=unified: CE + DLM with curriculum).

    Args:
        upstream_uri: the input checkpoint (a stage folder from <out_root>/pipeline.json, or gs://...).
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        training: the unified recipe's fields (configs/training/unified.yaml).
        data: training data.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after the fields, e.g. `training=stage2_pretrain`.
        smoke: the pipeline's tiny budget (applies to fields left at the recipe's value).
        out_root: where outputs go (<out_root>/<stage>/<key>); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's, from <out_root>/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = TrainParams(training=training, data=data, compute=compute, overrides=overrides)
    return run_single_stage("train", upstream_uri, form, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="lrc", log_prints=True)
def lrc_flow(
    upstream_uri: str,
    training: LrcTraining = recipe_value("lrc", "training"),
    data: LrcData = recipe_value("lrc", "data"),
    compute: LrcCompute = recipe_value("lrc", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint + teacher -> checkpoint with LRC adapters (training=lrc_calibration).

    Args:
        upstream_uri: the input checkpoint (a stage folder from <out_root>/pipeline.json, or gs://...).
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        training: the lrc_calibration recipe's fields; the lrc objective must stay on.
        data: calibration data.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after the fields, e.g. `training=stage2_pretrain`.
        smoke: the pipeline's tiny budget (applies to fields left at the recipe's value).
        out_root: where outputs go (<out_root>/<stage>/<key>); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's, from <out_root>/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = LrcParams(training=training, data=data, compute=compute, overrides=overrides)
    return run_single_stage("lrc", upstream_uri, form, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="distill", log_prints=True)
def distill_flow(
    upstream_uri: str,
    training: DistillTraining = recipe_value("distill", "training"),
    data: DistillData = recipe_value("distill", "data"),
    compute: DistillCompute = recipe_value("distill", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint + teacher -> distilled checkpoint (training=bitdistill_full).

    Args:
        upstream_uri: the input checkpoint (a stage folder from <out_root>/pipeline.json, or gs://...).
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        training: the bitdistill_full recipe's fields; a KD objective must stay on.
        data: training data.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after the fields, e.g. `training=stage2_pretrain`.
        smoke: the pipeline's tiny budget (applies to fields left at the recipe's value).
        out_root: where outputs go (<out_root>/<stage>/<key>); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's, from <out_root>/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = DistillParams(training=training, data=data, compute=compute, overrides=overrides)
    return run_single_stage("distill", upstream_uri, form, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="export", log_prints=True)
def export_flow(
    upstream_uri: str,
    export: ExportSection = recipe_value("export", "export"),
    compute: ExportCompute = recipe_value("export", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint -> GGUF verified in llama.cpp (export.format=hf: an HF folder).

    Args:
        upstream_uri: the input checkpoint (a stage folder from <out_root>/pipeline.json, or gs://...).
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        export: format, GGUF types, llama.cpp verification.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after the fields, e.g. `training=stage2_pretrain`.
        smoke: the pipeline's tiny budget (applies to fields left at the recipe's value).
        out_root: where outputs go (<out_root>/<stage>/<key>); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's, from <out_root>/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = ExportParams(export=export, compute=compute, overrides=overrides)
    return run_single_stage("export", upstream_uri, form, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)
