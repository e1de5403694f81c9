"""The MLflow store and the plain operations on it: experiments, runs, params and metrics in batches.

Design choices:
- The store is `tracking.mlflow_uri`, else $WRINKLEFREE_MLFLOW_STORE (not MLflow's own variable: paths.py), else
  `sqlite:///<cache>/mlflow/mlflow.db`, with a sqlite store's artifacts beside it, e.g.
  `<cache>/mlflow/artifacts` (wrinklefree_core/paths.py): no server, works offline.
- An experiment this code creates is typed `custom_model_development` (the tag behind the UI's
  experiment-type selector); one whose kind a user has set keeps it. Which view the UI opens first
  is a browser preference (GenAI by default, measured with MLflow 3.17), so links ask for the
  training view (`UI_VIEW`).
- Params are text, secrets of URIs masked, empty values left out (config/flatten.py `recordable`).
- Non-finite metric values are dropped: MLflow stores them inconsistently across backends.
"""

from __future__ import annotations

import logging
import math
import os
import time

from wrinklefree_core.config.flatten import recordable
from wrinklefree_core.paths import mlflow_artifact_location, mlflow_store_uri

PARENT_TAG = "mlflow.parentRunId"
# The variable a stage reads to nest its run under a pipeline's (set by the orchestration layer).
PARENT_RUN_ENV = "WRINKLEFREE_MLFLOW_PARENT_RUN_ID"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow UI: "Model training"
# The UI's first view is a browser preference (GenAI unless chosen); links ask for the training view.
UI_VIEW = "workflowType=machine_learning"
_PARAM_LIMIT = 6000  # MLflow's longest param value
_BATCH = 100  # MLflow's most params per log_batch

store_uri = mlflow_store_uri


def client(configured: str | None):
    """An MlflowClient on the store `configured` names (or the default store)."""
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow prints "View run ... at <uri>" when a run ends: the URI unmasked (a login in it would reach
    # every log) and without the training view. Runs are linked by ui_link() instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(store_uri(configured))


def experiment_id(mlflow_client, name: str) -> str:
    """Id of experiment `name`, created (typed for model training, artifacts beside a sqlite store) when missing."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        location = mlflow_artifact_location(mlflow_client.tracking_uri)
        try:
            exp_id = mlflow_client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created concurrently by another process
            exp = mlflow_client.get_experiment_by_name(name)
            if exp is None:
                raise
        else:
            return exp_id
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older version, or by Lightning's logger
        mlflow_client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


class TrackingUnavailableError(RuntimeError):
    """The configured MLflow store cannot be reached or written."""


def check_store(cfg) -> str:
    """Fail before a stage's work when its MLflow store cannot be used; returns the experiment id (created when new)."""
    tracking = cfg.tracking
    try:
        return experiment_id(client(tracking.mlflow_uri), tracking.experiment)
    except Exception as exc:
        raise TrackingUnavailableError(
            f"the MLflow store {store_uri(tracking.mlflow_uri)} cannot be used ({type(exc).__name__}: {str(exc)[:300]}); "
            "start the tracking server, or drop tracking.mlflow_uri to log into the local store"
        ) from exc


def log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    """Log params in MLflow-sized batches, URIs' secrets masked, empty values left out, values cut to MLflow's limit."""
    from mlflow.entities import Param

    items = [Param(k, v[:_PARAM_LIMIT]) for k, v in recordable(params).items()]
    for start in range(0, len(items), _BATCH):
        mlflow_client.log_batch(run_id, params=items[start : start + _BATCH])


def log_metrics(mlflow_client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log finite scalar metrics at `step`."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for start in range(0, len(items), _BATCH * 10):
        mlflow_client.log_batch(run_id, metrics=items[start : start + _BATCH * 10])


def set_tags(mlflow_client, run_id: str, tags: dict[str, str]) -> None:
    """Set many tags in one request."""
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:_PARAM_LIMIT]) for k, v in tags.items()]
    for start in range(0, len(items), _BATCH):
        mlflow_client.log_batch(run_id, tags=items[start : start + _BATCH])


def start_run(
    configured: str | None,
    experiment: str,
    name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    start_ms: int | None = None,
) -> tuple[str, str]:
    """Create a running MLflow run, started at `start_ms` (epoch ms; None = now); returns (run_id, experiment_id)."""
    c = client(configured)
    exp_id = experiment_id(c, experiment)
    tags = {"mlflow.runName": name, **tags}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = c.create_run(exp_id, start_time=start_ms, run_name=name, tags=tags)
    return run.info.run_id, exp_id


def end_run(configured: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    client(configured).set_terminated(run_id, status=status)


def ui_link(configured: str | None, experiment_id_: str, run_id: str) -> str | None:
    """The MLflow UI address of a run (training view, login masked) when the store is an HTTP server, else None."""
    from wrinklefree_core.config.redact import redact_text

    uri = store_uri(configured)
    if uri.startswith(("http://", "https://")):
        return redact_text(f"{uri.rstrip('/')}/#/experiments/{experiment_id_}/runs/{run_id}?{UI_VIEW}")
    return None


def find_stage_run(configured: str | None, experiment: str, out: str, since_ms: int) -> str | None:
    """The newest run tagged with output `out` that started at or after `since_ms` (the run a stage logged itself)."""
    c = client(configured)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    escaped = str(out).replace("'", "\\'")
    runs = c.search_runs(
        [exp.experiment_id], filter_string=f"tags.out = '{escaped}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if runs and runs[0].info.start_time >= since_ms:
        return runs[0].info.run_id
    return None
