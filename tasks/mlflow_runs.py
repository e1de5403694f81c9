"""MLflow bookkeeping of pipeline and stage runs: one parent run per flow run, one child per stage run.

Design choices:
- The store is the one the training stage logs to (wrinklefree_core/training/tracking.py):
  `tracking.mlflow_uri`, else `sqlite:///<cache>/mlflow/mlflow.db` with artifacts under
  `<cache>/mlflow/artifacts`. The two small functions are repeated here rather than imported
  because that module imports Lightning (~11 s), which export-only flows never need.
- Training stages create their own MLflow run (Lightning's logger, per-step curves) and nest it
  under the run named by WRINKLEFREE_MLFLOW_PARENT_RUN_ID; this module finds that run afterwards
  (tagged with its output folder) and adds what the pipeline knows: Prefect ids, artifacts, a
  loss-curve PNG. Convert and export get a run created here with the same shape.
- Params are the resolved config flattened to dotted keys, values as text (JSON for non-strings),
  the same spelling the training logger uses, so runs of every stage compare column by column.
- Non-finite metric values are dropped: MLflow stores them inconsistently across backends.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from wrinklefree_core.config.flatten import flatten_config, recordable
from wrinklefree_core.paths import mlflow_artifact_location, mlflow_store_uri

PARENT_TAG = "mlflow.parentRunId"
# The variable wrinklefree_core/training/tracking.py reads to nest a training run under a parent.
PARENT_RUN_ENV = "WRINKLEFREE_MLFLOW_PARENT_RUN_ID"
_PARAM_LIMIT = 6000  # MLflow's longest param value
_BATCH = 100  # MLflow's most params per log_batch


store_uri = mlflow_store_uri
_default_artifact_location = mlflow_artifact_location


def client(configured: str | None):
    """An MlflowClient on the store `configured` names (or the default store)."""
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(store_uri(configured))


def experiment_id(mlflow_client, name: str, configured: str | None) -> str:
    """Id of experiment `name`, created (with the training stage's artifact location) when missing."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if configured else _default_artifact_location()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


flatten = flatten_config


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
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    for start in range(0, len(items), _BATCH * 10):
        mlflow_client.log_batch(run_id, metrics=items[start : start + _BATCH * 10])


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
    exp_id = experiment_id(c, experiment, configured)
    tags = {"mlflow.runName": name, **tags}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = c.create_run(exp_id, start_time=start_ms, run_name=name, tags=tags)
    return run.info.run_id, exp_id


def end_run(configured: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    client(configured).set_terminated(run_id, status=status)


def find_training_run(configured: str | None, experiment: str, out: str | Path, since_ms: int) -> str | None:
    """The newest run tagged with output folder `out` that started after `since_ms` (the training stage's)."""
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


def loss_curve_png(mlflow_client, run_id: str, path: Path) -> Path | None:
    """Plot every `train/*` loss curve of a run (weighted copies left out) to `path`; None without history."""
    metrics = mlflow_client.get_run(run_id).data.metrics
    keys = sorted(k for k in metrics if k.startswith("train/") and not k.endswith("_weighted"))
    curves = {k: sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, k)) for k in keys}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 30 else None, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_link(configured: str | None, experiment_id_: str, run_id: str) -> str | None:
    """The MLflow UI address of a run when the store is an HTTP server, else None."""
    uri = store_uri(configured)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id_}/runs/{run_id}"
    return None
