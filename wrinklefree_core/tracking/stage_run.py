"""The MLflow run of a convert or export stage, made by the stage itself (`wrinklefree convert|export` and the pipeline alike).

Training stages get theirs from Lightning's logger (training/tracking.py); these two do the same
work by hand, at their end, because their params and metrics are only known then: the run is
created dated from the stage's start (the UI's duration is the stage's), nested under
WRINKLEFREE_MLFLOW_PARENT_RUN_ID when a pipeline set it, tagged with the output (`out`) that the
orchestration layer finds it by, and given the stage's sections as params, its metrics,
stage.json and verification.json. An export's GGUF is then uploaded and registered
(model_registry.py); an upload that fails leaves the run tagged incomplete and the stage
successful, because the exported files are done and the pipeline resumes the upload.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from wrinklefree_core.tracking import store
from wrinklefree_core.tracking.model_registry import ModelUploadError, publish_model
from wrinklefree_core.tracking.params import Tracked, stage_params
from wrinklefree_core.tracking.source import short_commit, source_tags

RECORD_FILES = ("stage.json", "verification.json")


def run_name(stage: Tracked, model_name: str) -> str:
    """`<n>-<stage>-<model>-<commit>`: the stage's number in the pipeline first (if any), so a run list sorted by name reads in order."""
    commit = short_commit()
    return "-".join(part for part in (f"{stage.number}" if stage.number else "", stage.name, model_name, commit) if part)


def now_ms() -> int:
    """Epoch milliseconds, MLflow's clock."""
    return int(time.time() * 1000)


def record_stage_run(
    cfg,
    stage: Tracked,
    out_uri: str,
    folder: Path,
    metrics: dict[str, float],
    started_ms: int,
    datasets: dict[str, dict[str, tuple[str, Any]]] | None = None,
    model_name: str | None = None,
) -> str:
    """Create, fill and close the MLflow run of a finished convert/export stage; returns its id.

    `datasets`: {context: {name: (source, token rows)}} that the stage read (datasets.py);
    `model_name`: the source model's name (an export's checkpoint knows it; default `model.name`).
    """
    from wrinklefree_core.tracking.datasets import log_datasets

    tracking = cfg.tracking
    model_name = model_name or cfg.model.name
    client = store.client(tracking.mlflow_uri)
    tags = {"stage": stage.name, "model": model_name, "out": out_uri, **source_tags(f"wrinklefree {stage.name}")}
    parent = os.environ.get(store.PARENT_RUN_ENV) or None
    run_id, exp_id = store.start_run(tracking.mlflow_uri, tracking.experiment, run_name(stage, model_name), tags, parent, started_ms)
    status = "FAILED"
    try:
        store.log_params(client, run_id, stage_params(cfg.model_dump(mode="json"), stage))
        store.log_metrics(client, run_id, metrics)
        if datasets:
            log_datasets(client, run_id, datasets)
        for name in RECORD_FILES:
            if (folder / name).is_file():
                client.log_artifact(run_id, str(folder / name))
        gguf = Path(out_uri) if out_uri.endswith(".gguf") else None  # an exported GGUF is uploaded and registered
        if gguf is not None:
            gguf = folder / gguf.name  # the local copy (a gs:// output was published from it)
            try:
                version = publish_model(
                    client, run_id, gguf, model_name, metrics, upload=tracking.model_upload, register=tracking.register_model
                )
            except ModelUploadError as exc:
                print(f"warning: {exc}", flush=True)
            else:
                if version is not None:
                    print(f"MLflow: registered {version[0]} version {version[1]} (run {run_id})", flush=True)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    link = store.ui_link(tracking.mlflow_uri, exp_id, run_id)
    if link:
        print(f"MLflow run: {link}", flush=True)
    return run_id
