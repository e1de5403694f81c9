"""Where a training run starts from: its own last checkpoint (exact resume) or nothing.

`training.resume=auto` continues from `OUT.state/checkpoints/last` when it exists (a gs:// OUT first
pulls the bucket's newest complete checkpoint, run_state.py). The config must match the one the
checkpoint was written with, except run-length and bookkeeping keys (`MAY_CHANGE`); the inputs
(teacher, source model) and batch size recorded in run.json are reused. `training.resume=never`
deletes the state and starts over. A resumed run whose MLflow run is not in this machine's
tracking store continues in a new MLflow run.
"""

from __future__ import annotations

from typing import Any

from wrinklefree_core.artifacts.io import OutputTarget
from wrinklefree_core.artifacts.output_guard import differing_keys
from wrinklefree_core.config.flatten import flatten_values
from wrinklefree_core.config.redact import redact
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.training.errors import ResumeError
from wrinklefree_core.training.run_state import START_OVER, TRAINER_STATE, RunState, check_trainer_state

# Config keys a resumed run may change: run length and bookkeeping, never what is being trained.
MAY_CHANGE = (
    "stage",
    "out",
    "overwrite",
    "tracking",
    "compute",
    "export",
    "gcs",
    "training.max_steps",
    "training.resume",
    "training.checkpoint_every",
    "training.val_every",
    "training.auto_batch_size",
)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring `MAY_CHANGE`."""
    return differing_keys(saved, current, MAY_CHANGE)


def resume_meta(cfg: RunConfig, state: RunState, is_zero: bool) -> dict[str, Any] | None:
    """run.json of the checkpoint to resume from, or None to start fresh (module docstring)."""
    if cfg.training.resume == "never":
        if is_zero:
            state.clear()
        return None
    if is_zero:
        state.recover()
    if not state.has_checkpoint():
        return None
    meta = state.read_meta()
    check_trainer_state(state.last / TRAINER_STATE)
    if int(meta.get("step", 0)) > cfg.training.max_steps:
        # Lightning would stop at once and the output would claim max_steps it never ran.
        raise ResumeError(
            f"{state.last} is at step {meta['step']}, beyond training.max_steps={cfg.training.max_steps}. Pass "
            f"training.max_steps={meta['step']} or more to continue it, or {START_OVER}"
        )
    diff = config_differences(meta["config"], redact(cfg.model_dump(mode="json")))
    if diff:
        shown = ", ".join(f"{k} (checkpoint: {flatten_values(meta['config']).get(k)!r})" for k in diff[:8])
        raise ResumeError(
            f"{state.last} was written by a run with a different config: {shown}. Re-run with the same settings to "
            "continue it, pass training.resume=never to start over (deletes it), or choose another out="
        )
    return meta


def remote_state(target: OutputTarget, cfg: RunConfig):
    """The bucket mirror of the resumable state of a gs:// OUT (None for local and mounted outputs)."""
    if target.remote is None or target.mounted:
        return None
    from wrinklefree_core.storage.checkpoints import RemoteCheckpoints
    from wrinklefree_core.uri import GCSURI

    uri = GCSURI(target.remote.bucket, f"{target.remote.prefix}.state/checkpoints")
    return RemoteCheckpoints(uri, cfg.gcs)


def known_run(cfg: RunConfig, run_id: str | None) -> str | None:
    """`run_id` when this machine's tracking store has that MLflow run, else None (a new run is started)."""
    if not run_id:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from wrinklefree_core.paths import mlflow_store_uri

    try:
        MlflowClient(mlflow_store_uri(cfg.tracking.mlflow_uri)).get_run(run_id)
    except MlflowException:
        print(f"MLflow run {run_id} of the checkpoint is not in this tracking store; continuing in a new run", flush=True)
        return None
    return run_id
