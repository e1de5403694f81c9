"""MLflow bookkeeping of pipeline and stage runs: one parent run per flow run, one child per stage run.

Design choices:
- The store and its plain operations live in wrinklefree_core/tracking/store.py, which every
  stage uses too (no Lightning there, so export-only flows stay light); this module re-exports
  them for the flows and adds what only the orchestration layer draws: the loss-curve PNG, links.
- Every stage logs its own run (training through Lightning, convert and export at their end,
  wrinklefree_core/tracking/stage_run.py), nested under WRINKLEFREE_MLFLOW_PARENT_RUN_ID and
  tagged with its output folder; the stage task finds it by that tag and adds what the pipeline
  knows: Prefect ids, the cache key, the parameters the user changed, a loss-curve PNG.
"""

from __future__ import annotations

from pathlib import Path

from wrinklefree_core.tracking.store import (  # noqa: F401 - the flows' names for them
    PARENT_RUN_ENV,
    PARENT_TAG,
    client,
    end_run,
    experiment_id,
    find_stage_run,
    log_metrics,
    log_params,
    set_tags,
    start_run,
    store_uri,
    ui_link,
)


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

