"""Helpers shared by the training-stage tests: small-run overrides, the CLI, and MLflow read-back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from wrinklefree_core.paths import cache_dir
from wrinklefree_core.training.tracking import tracking_uri

# Short sequences, small batches, one held-out play, no validation during training (the stage
# still scores the held-out rows once at the end).
SMALL = ["training.seq_len=32", "training.batch_size=4", "data.val_fraction=0.01", "training.val_every=100000"]


def unified_run(converted_dir: Path, out: Path, steps: int, every: int, *extra: str) -> list[str]:
    """Overrides of a short `unified` run from `converted_dir` with a resumable checkpoint every `every` steps.

    `extra` comes after the SMALL budget (so it can change the batch) and before `out=`.
    """
    return [
        f"model={converted_dir}",
        "training=unified",
        f"training.max_steps={steps}",
        f"training.checkpoint_every={every}",
        "training.optimizer.lr=2e-3",
        *SMALL,
        *extra,
        f"out={out}",
    ]


def cli_command(*args: str) -> list[str]:
    """argv of `wrinklefree ARGS` in a fresh interpreter, exactly as the console script runs it."""
    return [sys.executable, "-m", "wrinklefree_core.cli", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI to completion with this session's environment (cache, one thread)."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def mlflow_client() -> MlflowClient:
    """A client on the default tracking store of this session's cache."""
    assert cache_dir()  # the cache root (and with it the store location) comes from WRINKLEFREE_CACHE
    return MlflowClient(tracking_uri(None))


def run_of(out: Path):
    """The single MLflow run that wrote `out` (runs are tagged with their output folder)."""
    client = mlflow_client()
    experiment = client.get_experiment_by_name("wrinklefree")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.out = '{out}'")
    assert len(runs) == 1, f"expected one MLflow run for {out}, found {len(runs)}"
    return runs[0]


def history(out: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of metric `key` of the run that wrote `out`, by step."""
    run = run_of(out)
    points = mlflow_client().get_metric_history(run.info.run_id, key)
    return sorted((p.step, p.value) for p in points)


def first_last_means(values: list[float], n: int = 3) -> tuple[float, float]:
    """Mean of the first n and of the last n values."""
    return sum(values[:n]) / n, sum(values[-n:]) / n
