"""One flow per stage, for running or re-running a single stage from the Prefect UI or CLI.

Each takes the upstream artifact URI as a parameter (convert: an optional HF model folder instead
of `model`; the others default to the upstream stage's output that the last pipeline run recorded
in `out_root/pipeline.json`), the stage's config sections as typed parameters (flows/stage_params.py:
the UI shows them as a validated form whose defaults are what the pipeline runs by default), raw
`overrides` for what the form cannot say, and the same out root / tracking settings as the full
pipeline. The overrides are built exactly as the pipeline builds them (`PipelineParams.overrides_for`),
so re-running a stage of a default pipeline run with the form untouched is a cache hit, and changing
a field reruns only that stage. (A smoke run's stages ran with the smoke budget's values: give them
as fields, or rerun through `full-pipeline/smoke`.)
`parent_run_id` nests the stage's MLflow run under an existing pipeline run (its id is in
`out_root/pipeline.json`); left empty, the stage run is a top-level MLflow run.

When `model` is empty, the model config is read from the upstream checkpoint's stage.json, so names
(MLflow run, GGUF file) follow the model the checkpoint came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from flows.params import PipelineParams
from flows.sections import DEFAULT_MODEL, StageSections
from flows.sections import context_value as default_of
from flows.stage_params import (
    ConvertBitNet,
    ConvertCompute,
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
from tasks.stage_plan import DEFAULT_OUT_ROOT, STAGES, normalize_root
from wrinklefree_core.uri import is_gcs
from tasks.stage_task import call_stage
from wrinklefree_core.config import group_options


def model_from_upstream(upstream_uri: str | None) -> str | None:
    """`model=` value matching a local checkpoint's stage.json (a config option name or an HF folder)."""
    if not upstream_uri or is_gcs(upstream_uri) or not (Path(upstream_uri) / "stage.json").is_file():
        return None
    from wrinklefree_core.artifacts.manifest import read_manifest

    model = read_manifest(upstream_uri).config.get("model", {})
    if model.get("name") in group_options("model"):
        return model["name"]
    return model.get("path") or None


def upstream_from_pipeline(stage: str, out_root: str) -> str:
    """The output of the stage before `stage` that the last pipeline run in `out_root` recorded."""
    before = STAGES[STAGES.index(stage) - 1]
    summary_path = Path(normalize_root(out_root)) / "pipeline.json"
    hint = f"give upstream_uri: the `uri` of a {before} stage output (the {before} entry of a pipeline.json, or a gs:// folder)"
    if is_gcs(out_root):
        raise ValueError(f"stage '{stage}': out_root {out_root} keeps no pipeline.json; {hint}")
    if not summary_path.is_file():
        raise ValueError(f"stage '{stage}': no upstream_uri given and no pipeline run recorded at {summary_path}; {hint}, or run the pipeline with this out_root first")
    try:
        return json.loads(summary_path.read_text())["stages"][before]["uri"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"stage '{stage}': {summary_path} records no {before} output ({exc!r}); {hint}") from exc


def run_single_stage(
    stage: str,
    upstream_uri: str,
    form: StageSections,
    model: str,
    out_root: str,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    refresh: bool,
) -> dict[str, Any]:
    """Run `stage` with the pipeline's override rules; returns the stage result with `cached`.

    Empty strings mean "not given" (a form's text box cannot say null without a type switch).
    """
    tracking_uri, parent_run_id = tracking_uri or None, parent_run_id or None
    if not upstream_uri and stage != "convert":
        upstream_uri = upstream_from_pipeline(stage, out_root)
        print(f"{stage}: upstream from the last pipeline run: {upstream_uri}")
    upstream_uri = upstream_uri or None
    model = model or model_from_upstream(upstream_uri) or DEFAULT_MODEL
    params = PipelineParams(model=model, out_root=out_root, tracking_uri=tracking_uri, experiment=experiment, **{stage: form})
    result, cached = call_stage(stage, params.overrides_for(stage), upstream_uri, parent_run_id, out_root, refresh)
    result["cached"] = cached
    print(f"{stage}: {'cache hit' if cached else 'ran'} -> {result['uri']}")
    return result


# Prefect copies parameters per run, so the mutable `overrides` defaults below are never shared (B006).


@flow(name="convert", log_prints=True)
def convert_flow(
    model: str = DEFAULT_MODEL,
    upstream_uri: str = "",
    bitnet: ConvertBitNet = default_of("convert", "bitnet"),
    compute: ConvertCompute = default_of("convert", "compute"),
    overrides: list[str] = [],  # noqa: B006
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str = "",
    experiment: str = "wrinklefree",
    parent_run_id: str = "",
    refresh: bool = False,
) -> dict[str, Any]:
    """HF model (config name, or `upstream_uri` = an HF folder) -> BitNet checkpoint.

    Args:
        model: configs/model option (tiny_llama, smollm2_135m, ...).
        upstream_uri: an HF model folder to convert instead of `model`.
        bitnet: conversion settings (SubLN placement, target modules, skipped layers).
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after every field, e.g. `training=stage2_pretrain` or `model.dtype=bfloat16`.
        out_root: where outputs go (out_root/stage/key); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's mlflow_run_id, in out_root/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = ConvertParams(bitnet=bitnet, compute=compute, overrides=overrides)
    return run_single_stage("convert", upstream_uri, form, model, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="train", log_prints=True)
def train_flow(
    upstream_uri: str = "",
    training: TrainTraining = default_of("train", "training"),
    data: TrainData = default_of("train", "data"),
    compute: TrainCompute = default_of("train", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str = "",
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str = "",
    experiment: str = "wrinklefree",
    parent_run_id: str = "",
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint -> trained checkpoint (training=unified: CE + DLM with curriculum).

    Args:
        upstream_uri: the convert stage's output: its `uri` in out_root/pipeline.json, or a gs:// folder; empty = the one the last pipeline run in out_root recorded.
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        training: the unified recipe's fields (configs/training/unified.yaml).
        data: training data.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after every field, e.g. `training=stage2_pretrain` or `model.dtype=bfloat16`.
        out_root: where outputs go (out_root/stage/key); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's mlflow_run_id, in out_root/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = TrainParams(training=training, data=data, compute=compute, overrides=overrides)
    return run_single_stage("train", upstream_uri, form, model, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="lrc", log_prints=True)
def lrc_flow(
    upstream_uri: str = "",
    training: LrcTraining = default_of("lrc", "training"),
    data: LrcData = default_of("lrc", "data"),
    compute: LrcCompute = default_of("lrc", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str = "",
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str = "",
    experiment: str = "wrinklefree",
    parent_run_id: str = "",
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint + teacher -> checkpoint with LRC adapters (training=lrc_calibration).

    Args:
        upstream_uri: the train stage's output: its `uri` in out_root/pipeline.json, or a gs:// folder; empty = the one the last pipeline run in out_root recorded.
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        training: the lrc_calibration recipe's fields; the lrc objective must stay on.
        data: calibration data.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after every field, e.g. `training=stage2_pretrain` or `model.dtype=bfloat16`.
        out_root: where outputs go (out_root/stage/key); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's mlflow_run_id, in out_root/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = LrcParams(training=training, data=data, compute=compute, overrides=overrides)
    return run_single_stage("lrc", upstream_uri, form, model, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="distill", log_prints=True)
def distill_flow(
    upstream_uri: str = "",
    training: DistillTraining = default_of("distill", "training"),
    data: DistillData = default_of("distill", "data"),
    compute: DistillCompute = default_of("distill", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str = "",
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str = "",
    experiment: str = "wrinklefree",
    parent_run_id: str = "",
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint + teacher -> distilled checkpoint (training=bitdistill_full).

    Args:
        upstream_uri: the lrc stage's output: its `uri` in out_root/pipeline.json, or a gs:// folder; empty = the one the last pipeline run in out_root recorded.
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        training: the bitdistill_full recipe's fields; a KD objective must stay on.
        data: training data.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after every field, e.g. `training=stage2_pretrain` or `model.dtype=bfloat16`.
        out_root: where outputs go (out_root/stage/key); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's mlflow_run_id, in out_root/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = DistillParams(training=training, data=data, compute=compute, overrides=overrides)
    return run_single_stage("distill", upstream_uri, form, model, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="export", log_prints=True)
def export_flow(
    upstream_uri: str = "",
    export: ExportSection = default_of("export", "export"),
    compute: ExportCompute = default_of("export", "compute"),
    overrides: list[str] = [],  # noqa: B006
    model: str = "",
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str = "",
    experiment: str = "wrinklefree",
    parent_run_id: str = "",
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint -> GGUF verified in llama.cpp (export.format=hf: an HF folder).

    Args:
        upstream_uri: the distill stage's output: its `uri` in out_root/pipeline.json, or a gs:// folder; empty = the one the last pipeline run in out_root recorded.
        model: configs/model option or HF folder; empty = read from the upstream's stage.json.
        export: format, GGUF types, llama.cpp verification.
        compute: where the stage runs.
        overrides: extra `wrinklefree` overrides applied after every field, e.g. `training=stage2_pretrain` or `model.dtype=bfloat16`.
        out_root: where outputs go (out_root/stage/key); the pipeline's, for cache hits.
        tracking_uri: MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder.
        experiment: MLflow experiment.
        parent_run_id: MLflow run to nest under (the pipeline's mlflow_run_id, in out_root/pipeline.json).
        refresh: recompute even when a cached result matches.
    """
    form = ExportParams(export=export, compute=compute, overrides=overrides)
    return run_single_stage("export", upstream_uri, form, model, out_root, tracking_uri, experiment, parent_run_id, refresh)
