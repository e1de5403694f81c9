"""MLflow tracking of a training stage: one MLflow run per stage run, resumed runs included.

Design choices:
- Lightning's MLFlowLogger carries the per-step metrics. The tracking URI is `tracking.mlflow_uri`,
  else $WRINKLEFREE_MLFLOW_STORE, else a sqlite store in the cache folder (`sqlite:///<cache>/mlflow/mlflow.db`, artifacts under
  `<cache>/mlflow/artifacts`), which needs no server and works offline.
- A resumed run continues the same MLflow run (its id is in the checkpoint's run.json), so one
  stage run is one MLflow run with one continuous curve; steps between the last checkpoint and a
  crash are logged again by the resumed run with the same values.
- Params are the sections the stage reads (tracking/params.py), flattened to dotted keys
  (`training.optimizer.lr`), logged once when the run starts (MLflow refuses to change a logged
  param, and `training.max_steps` may change on a resume). Lists are logged as their JSON text.
- Every run carries the code's commit, its source and user (tracking/source.py), its data as
  MLflow dataset inputs and, while it trains, MLflow's system metrics (tracking/system_metrics.py).
- The experiment is created typed for model training (tracking/store.py) before Lightning sees it.
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
from lightning.pytorch.utilities import rank_zero_only

from wrinklefree_core.paths import mlflow_artifact_location, mlflow_store_uri
from wrinklefree_core.tracking import store
from wrinklefree_core.tracking.params import Tracked, stage_params
from wrinklefree_core.tracking.source import source_tags

tracking_uri = mlflow_store_uri


def build_logger(cfg, run_name: str, tags: dict[str, str], run_id: str | None = None) -> MLFlowLogger:
    """The MLFlowLogger of this stage run; `run_id` continues an existing run."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tags = {**source_tags("wrinklefree train"), **tags}
    if rank_zero_only.rank == 0:  # the only rank that logs
        store.check_store(cfg)
    parent = os.environ.get(store.PARENT_RUN_ENV)
    if parent:
        tags[store.PARENT_TAG] = parent
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        tracking_uri=tracking_uri(cfg.tracking.mlflow_uri),
        run_name=run_name,
        run_id=run_id,
        tags=tags,
        artifact_location=mlflow_artifact_location(tracking_uri(cfg.tracking.mlflow_uri)),
    )


def log_config(logger: MLFlowLogger, config: dict[str, Any], stage: Tracked, extra: dict[str, Any] | None = None) -> None:
    """Log the sections of the resolved config that `stage` reads (plus `extra` values) as the run's params."""
    params = stage_params(config, stage)
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


def log_data(logger: MLFlowLogger, data_cfg, train: dict[str, Any], validation: dict[str, Any]) -> None:
    """Each source's training and held-out token rows as the run's dataset inputs."""
    from wrinklefree_core.tracking.datasets import data_splits, log_datasets

    log_datasets(logger.experiment, logger.run_id, data_splits(data_cfg, train, validation))
