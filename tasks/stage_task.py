"""`run_stage`: one pipeline stage as one Prefect task run and one MLflow run.

    plan      compose the RunConfig (our pydantic models validate every override), fingerprint the
              input artifact, derive the cache key and the output URI from it     (stage_plan.py)
    run       in this process (compute.backend=local) or as a SkyPilot job        (stage_exec.py)
    record    an MLflow run nested under the pipeline's: params = flattened resolved config, the
              stage's metrics, stage.json, verification.json, a loss-curve PNG, the GGUF (by URI,
              and the file itself when small); a Prefect link/markdown artifact pointing at it
    return    a JSON-able dict: output URI, metrics, MLflow ids, cache key

Design choices:
- Caching: `cache_key_fn` = the plan's key (tasks/digest.py): stage, resolved config, the upstream
  artifact's digest, the package version, the out root. A changed stage changes its output's
  stage.json, hence the digest every later stage puts in its key, so exactly the stages after it
  rerun. Results are persisted as JSON under `<cache>/prefect-results`, so a cache hit works from
  any process that shares the cache folder (test harness, worker subprocesses).
- `call_stage` (what flows use) forces a refresh when the cached output has disappeared (local
  URIs), so deleting an artifact folder is enough to recompute it.
- Training stages log their own MLflow run (per-step curves, via Lightning); this task finds it by
  its `out` tag and completes it, so a stage run is still exactly one MLflow run.
- Prefect and MLflow stay out of wrinklefree_core; the tasks/ package is where they meet it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from tasks import mlflow_runs
from tasks.stage_exec import StageRun, run_local, run_skypilot
from tasks.stage_plan import RECIPES, StagePlan, output_present, plan_stage
from wrinklefree_core.paths import cache_dir

# GGUFs up to this size are copied into MLflow; larger ones are referenced by URI only.
GGUF_LOG_LIMIT = 64 * 2**20


def stage_cache_key(context, parameters: dict[str, Any]) -> str:
    """Prefect cache_key_fn: the plan's key for these task parameters."""
    p = parameters
    return "stage-" + plan_stage(p["stage"], p["overrides"], p.get("upstream_uri"), p.get("out_root")).key


def result_storage() -> Path:
    """Where task results (and with them cache records) persist: `<cache>/prefect-results`.

    A Path, which Prefect turns into a local file system without a server-side block document, so
    every process (test harness, worker subprocess) finds the same records without registering one.
    """
    folder = cache_dir() / "prefect-results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------------ record


def _record(plan: StagePlan, run: StageRun, parent_run_id: str | None, started_ms: int) -> tuple[str, str]:
    """Create or complete this stage's MLflow run; returns (run_id, experiment_id)."""
    from prefect.runtime import flow_run, task_run

    cfg = plan.cfg
    tracking = cfg.tracking.mlflow_uri
    client = mlflow_runs.client(tracking)
    exp_id = mlflow_runs.experiment_id(client, cfg.tracking.experiment, tracking)
    training = plan.stage in RECIPES
    run_id = None
    if training and run.logged_out:
        run_id = mlflow_runs.find_training_run(tracking, cfg.tracking.experiment, run.logged_out, started_ms)
    own = run_id is None  # convert, export, or a training run that logged somewhere else
    if own:
        tags = {"stage": plan.stage, "model": cfg.model.name, "out": plan.out_uri}
        name = f"{plan.stage}-{cfg.model.name}"
        # Opened after the work, but dated from its start: the UI's duration is the stage's.
        run_id, exp_id = mlflow_runs.start_run(tracking, cfg.tracking.experiment, name, tags, parent_run_id, started_ms)
        mlflow_runs.log_params(client, run_id, mlflow_runs.flatten(cfg.model_dump(mode="json")))
        mlflow_runs.log_metrics(client, run_id, run.metrics)
    tags = {
        "pipeline_stage": plan.stage,
        "artifact_uri": plan.out_uri,
        "cache_key": plan.key,
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        "prefect.task_run_id": str(task_run.id or ""),
    }
    if plan.stage == "export" and plan.out_uri.endswith(".gguf"):
        tags["gguf_uri"] = plan.out_uri
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if run.local_out is not None:
        _log_files(client, run_id, run.local_out, training)
    if own:
        client.set_terminated(run_id, "FINISHED")
    return run_id, exp_id


def _log_files(client, run_id: str, local_out: Path, training: bool) -> None:
    folder = local_out if local_out.is_dir() else local_out.parent
    for name in ("stage.json", "verification.json"):
        if (folder / name).is_file():
            client.log_artifact(run_id, str(folder / name))
    for path in sorted(folder.glob("*.gguf")):  # the model and, for LRC, its LoRA adapter
        if path.stat().st_size <= GGUF_LOG_LIMIT:
            client.log_artifact(run_id, str(path), artifact_path="gguf")
    if training:
        with tempfile.TemporaryDirectory() as tmp:
            png = mlflow_runs.loss_curve_png(client, run_id, Path(tmp) / "loss_curve.png")
            if png is not None:
                client.log_artifact(run_id, str(png))


def _publish_link(plan: StagePlan, run_id: str, exp_id: str) -> None:
    """A Prefect artifact on this task run that leads to the MLflow run."""
    tracking = plan.cfg.tracking.mlflow_uri
    key = f"mlflow-{plan.stage}"
    link = mlflow_runs.run_link(tracking, exp_id, run_id)
    if link:
        create_link_artifact(link, link_text=f"MLflow run of {plan.stage}", key=key, description=f"{plan.stage} -> {plan.out_uri}")
        return
    store = mlflow_runs.store_uri(tracking)
    create_markdown_artifact(
        f"**{plan.stage}** -> `{plan.out_uri}`\n\nMLflow run `{run_id}` (experiment `{exp_id}`) in `{store}`.\n\n"
        f"Browse it with `mlflow ui --backend-store-uri {store}`.",
        key=key,
        description=f"MLflow run of the {plan.stage} stage",
    )


# ------------------------------------------------------------------------------------------ task


@task(
    name="run-stage",
    task_run_name="{stage}",
    cache_key_fn=stage_cache_key,
    persist_result=True,
    result_serializer="json",
)
def run_stage(
    stage: str,
    overrides: list[str],
    upstream_uri: str | None = None,
    parent_run_id: str | None = None,
    out_root: str | None = None,
) -> dict[str, Any]:
    """Run one stage (convert, train, lrc, distill, export) and log it; returns its output URI and metrics.

    `overrides` use the CLI syntax (`model=tiny_llama`, `training.max_steps=3`); `upstream_uri` is the
    input artifact (a checkpoint folder, or for convert an HF model folder); `parent_run_id` nests
    the MLflow run; outputs go under `out_root` unless an `out=` override names the place.
    """
    logger = get_run_logger()
    plan = plan_stage(stage, overrides, upstream_uri, out_root)
    logger.info("%s: key %s -> %s", stage, plan.key[:12], plan.out_uri)
    started_ms = int(time.time() * 1000)
    started = time.perf_counter()
    if plan.cfg.compute.backend == "skypilot":
        run = run_skypilot(plan, parent_run_id, logger.info)
    else:
        run = run_local(plan, parent_run_id)
    if run.summary:
        logger.info(run.summary)
    run_id, exp_id = _record(plan, run, parent_run_id, started_ms)
    _publish_link(plan, run_id, exp_id)
    return {
        "stage": stage,
        "uri": plan.out_uri,
        "folder": plan.folder_uri,
        "metrics": {k: float(v) for k, v in run.metrics.items()},
        "mlflow_run_id": run_id,
        "mlflow_experiment_id": exp_id,
        "cache_key": plan.key,
        "seconds": time.perf_counter() - started,
    }


def call_stage(
    stage: str,
    overrides: list[str],
    upstream_uri: str | None = None,
    parent_run_id: str | None = None,
    out_root: str | None = None,
    refresh: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Run `run_stage` from a flow with persisted results; returns (result, whether it came from the cache).

    Validates the stage's config first (a bad override fails here, before any task starts), and
    refreshes the cache entry when its output is gone. Raises the stage's own exception on failure.
    """
    plan = plan_stage(stage, overrides, upstream_uri, out_root)
    refresh = refresh or not output_present(plan.out_uri)
    configured = run_stage.with_options(result_storage=result_storage(), refresh_cache=refresh)
    state = configured(stage, list(overrides), upstream_uri, parent_run_id, out_root, return_state=True)
    result = state.result()
    return result, state.name == "Cached"
