"""One flow per stage, for running or re-running a single stage from the Prefect UI or CLI.

Each takes the upstream artifact URI as a parameter (convert: an optional HF model folder instead
of `model`), the stage's overrides, and the same out root / tracking / smoke settings as the full
pipeline. Overrides are built exactly as the pipeline builds them (`PipelineParams.overrides_for`),
so re-running a stage with the pipeline's settings is a cache hit, and changing an override reruns
only that stage. `parent_run_id` nests the stage's MLflow run under an existing pipeline run (its
id is in `<out_root>/pipeline.json`); left empty, the stage run is a top-level MLflow run.

When `model` is empty, the model config is read from the upstream checkpoint's stage.json, so names
(MLflow run, GGUF file) follow the model the checkpoint came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.params import PipelineParams
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
    overrides: list[str],
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
        model=model, smoke=smoke, out_root=out_root, tracking_uri=tracking_uri, experiment=experiment, **{stage: overrides}
    )
    result, cached = call_stage(stage, params.overrides_for(stage), upstream_uri, parent_run_id, out_root, refresh)
    result["cached"] = cached
    print(f"{stage}: {'cache hit' if cached else 'ran'} -> {result['uri']}")
    return result


@flow(name="convert", log_prints=True)
def convert_flow(
    model: str = "smollm2_135m",
    upstream_uri: str | None = None,
    overrides: list[str] = [],  # noqa: B006 - Prefect copies parameters per run
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """HF model (config name, or `upstream_uri` = an HF folder) -> BitNet checkpoint."""
    return run_single_stage("convert", upstream_uri, overrides, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="train", log_prints=True)
def train_flow(
    upstream_uri: str,
    overrides: list[str] = [],  # noqa: B006 - Prefect copies parameters per run
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint -> trained checkpoint (training=unified: CE + DLM with curriculum)."""
    return run_single_stage("train", upstream_uri, overrides, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="lrc", log_prints=True)
def lrc_flow(
    upstream_uri: str,
    overrides: list[str] = [],  # noqa: B006 - Prefect copies parameters per run
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint + teacher -> checkpoint with LRC adapters (training=lrc_calibration)."""
    return run_single_stage("lrc", upstream_uri, overrides, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="distill", log_prints=True)
def distill_flow(
    upstream_uri: str,
    overrides: list[str] = [],  # noqa: B006 - Prefect copies parameters per run
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint + teacher -> distilled checkpoint (training=bitdistill_full)."""
    return run_single_stage("distill", upstream_uri, overrides, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)


@flow(name="export", log_prints=True)
def export_flow(
    upstream_uri: str,
    overrides: list[str] = [],  # noqa: B006 - Prefect copies parameters per run
    model: str | None = None,
    smoke: bool = False,
    out_root: str = DEFAULT_OUT_ROOT,
    tracking_uri: str | None = None,
    experiment: str = "wrinklefree",
    parent_run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """BitNet checkpoint -> GGUF verified in llama.cpp (export.format=hf: an HF folder)."""
    return run_single_stage("export", upstream_uri, overrides, model, smoke, out_root, tracking_uri, experiment, parent_run_id, refresh)
