"""MLflow tracking of a training stage: one MLflow run per stage run, resumed runs included.

Design choices:
- Lightning's MLFlowLogger carries the per-step metrics. The tracking URI is `tracking.mlflow_uri`,
  else a sqlite store in the cache folder (`sqlite:///<cache>/mlflow/mlflow.db`, artifacts under
  `<cache>/mlflow/artifacts`), which needs no server and works offline.
- A resumed run continues the same MLflow run (its id is in the checkpoint's run.json), so one
  stage run is one MLflow run with one continuous curve; steps between the last checkpoint and a
  crash are logged again by the resumed run with the same values.
- Params are the resolved config flattened to dotted keys (`training.optimizer.lr`), logged once
  when the run starts (MLflow refuses to change a logged param, and `training.max_steps` may change
  on a resume). Lists and nested lists are logged as their JSON text.
- The parent run, when a pipeline sets `WRINKLEFREE_MLFLOW_PARENT_RUN_ID`, becomes the
  `mlflow.parentRunId` tag, which the MLflow UI nests runs by.
- After training: final metrics at the last step and stage.json as an artifact.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

from wrinklefree_core.config.flatten import flatten_config, recordable
from wrinklefree_core.paths import mlflow_artifact_location, mlflow_store_uri

PARENT_RUN_ENV = "WRINKLEFREE_MLFLOW_PARENT_RUN_ID"


tracking_uri = mlflow_store_uri
default_artifact_location = mlflow_artifact_location


def build_logger(cfg, run_name: str, tags: dict[str, str], run_id: str | None = None) -> MLFlowLogger:
    """The MLFlowLogger of this stage run; `run_id` continues an existing run."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tags = dict(tags)
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        tracking_uri=tracking_uri(cfg.tracking.mlflow_uri),
        run_name=run_name,
        run_id=run_id,
        tags=tags,
        artifact_location=None if cfg.tracking.mlflow_uri else default_artifact_location(),
    )


def log_config(logger: MLFlowLogger, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Log the flattened resolved config (plus `extra` values) as the run's params."""
    params = recordable(flatten_config(config))
    params.update({k: str(v) for k, v in (extra or {}).items()})
    logger.log_hyperparams(params)


def log_final(logger: MLFlowLogger, metrics: dict[str, float], step: int, artifacts: list[Path]) -> None:
    """Final metrics at `step` and artifact files, on the (possibly already finished) run."""
    from mlflow.entities import Metric

    client, run_id = logger.experiment, logger.run_id
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"final/{k}", float(v), timestamp, step) for k, v in metrics.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
