"""`run_stage`: one pipeline stage as one Prefect task run and one MLflow run.

    plan      compose the RunConfig (our pydantic models validate every override), fingerprint the
              input artifact, derive the cache key and the output URI from it     (stage_plan.py)
    run       in this process (compute.backend=local) or as a SkyPilot job        (stage_exec.py)
    record    the MLflow run the stage logged itself (nested under the pipeline's; its sections as
              params, metrics, stage.json, verification.json, the GGUF uploaded and registered),
              completed with Prefect ids, the cache key, `changed.*` tags for what differs from the
              stage's defaults and a loss-curve PNG; a Prefect link/markdown artifact pointing at it
    return    a JSON-able dict: output URI, metrics, MLflow ids, cache key

Design choices:
- Caching: `cache_key_fn` = the plan's key (tasks/digest.py): stage, resolved config, the upstream
  artifact's digest, the package version, the out root. A changed stage changes its output's
  stage.json, hence the digest every later stage puts in its key, so exactly the stages after it
  rerun. Results are persisted as JSON under `<cache>/prefect-results`, so a cache hit works from
  any process that shares the cache folder (test harness, worker subprocesses).
- `call_stage` (what flows use) forces a refresh when the cached output has disappeared (local
  URIs), so deleting an artifact folder is enough to recompute it.
- Every stage logs its own MLflow run (training via Lightning, convert/export at their end); this task
  finds it by its `out` tag and completes it, so a stage run is exactly one MLflow run whether it ran
  here, on a SkyPilot node or from the CLI. An export whose upload failed is resumed by `call_stage`.
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
from tasks.stage_plan import StagePlan, compose_stage, output_present, plan_stage
from wrinklefree_core.stages import base as stage_registry
from wrinklefree_core.uri import is_gcs
from wrinklefree_core.paths import cache_dir
from wrinklefree_core.tracking.params import changed_tags, stage_params
from wrinklefree_core.tracking.source import source_tags
from wrinklefree_core.tracking.stage_run import run_name


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


def _record(plan: StagePlan, run: StageRun, parent_run_id: str | None, started_ms: int, upstream_uri: str | None) -> tuple[str, str]:
    """Complete this stage's MLflow run (the one the stage logged itself) or create it; returns (run_id, experiment_id)."""
    from prefect.runtime import flow_run, task_run

    cfg = plan.cfg
    tracking = cfg.tracking.mlflow_uri
    client = mlflow_runs.client(tracking)
    exp_id = mlflow_runs.experiment_id(client, cfg.tracking.experiment)
    run_id = None
    if run.logged_out:
        run_id = mlflow_runs.find_stage_run(tracking, cfg.tracking.experiment, run.logged_out, started_ms)
    own = run_id is None  # the stage logged somewhere this process cannot see (another store)
    if own:
        tags = {"stage": plan.stage, "model": cfg.model.name, "out": plan.out_uri, **source_tags(f"wrinklefree {plan.stage}")}
        # Opened after the work, but dated from its start: the UI's duration is the stage's.
        run_id, exp_id = mlflow_runs.start_run(
            tracking, cfg.tracking.experiment, run_name(stage_registry.get(plan.stage).tracked, cfg.model.name), tags, parent_run_id, started_ms
        )
        mlflow_runs.log_params(client, run_id, stage_params(cfg.model_dump(mode="json"), stage_registry.get(plan.stage).tracked))
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
    defaults = compose_stage(plan.stage, [], upstream_uri).model_dump(mode="json")
    tags.update(changed_tags(cfg.model_dump(mode="json"), defaults, stage_registry.get(plan.stage).tracked))
    mlflow_runs.set_tags(client, run_id, tags)
    if own and run.local_out is not None:
        _log_records(client, run_id, run.local_out)
    if stage_registry.get(plan.stage).command == "train":  # a training stage: its loss curve
        _log_loss_curve(client, run_id)
    if own:
        client.set_terminated(run_id, "FINISHED")
    return run_id, exp_id


def _log_records(client, run_id: str, local_out: Path) -> None:
    folder = local_out if local_out.is_dir() else local_out.parent
    for name in ("stage.json", "verification.json"):
        if (folder / name).is_file():
            client.log_artifact(run_id, str(folder / name))


def _log_loss_curve(client, run_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        png = mlflow_runs.loss_curve_png(client, run_id, Path(tmp) / "loss_curve.png")
        if png is not None:
            client.log_artifact(run_id, str(png))


def resume_model_upload(plan: StagePlan, result: dict[str, Any]) -> None:
    """Finish the upload and registration of an export's GGUF that its stage could not complete (idempotent).

    A cached export comes back here too, so a pipeline re-run after a failed upload sends only the
    files still missing from the run; an error now fails the flow with the file's place and the fix.
    """
    from mlflow.exceptions import MlflowException

    from wrinklefree_core.tracking.model_registry import UPLOAD_TAG, VERSION_TAG, publish_model

    gguf = Path(result["uri"])
    tracking = plan.cfg.tracking
    if plan.stage != "export" or is_gcs(result["uri"]) or gguf.suffix != ".gguf" or not gguf.is_file() or not tracking.model_upload:
        return
    client = mlflow_runs.client(tracking.mlflow_uri)
    try:
        tags = client.get_run(result["mlflow_run_id"]).data.tags
    except MlflowException:  # the cached run lives in another store
        return
    if tags.get(UPLOAD_TAG) == "complete" and (not tracking.register_model or VERSION_TAG in tags):
        return
    model = tags.get("model", plan.cfg.model.name)
    publish_model(client, result["mlflow_run_id"], gguf, model, result["metrics"], upload=True, register=tracking.register_model)


def _publish_link(plan: StagePlan, run_id: str, exp_id: str) -> None:
    """A Prefect artifact on this task run that leads to the MLflow run."""
    tracking = plan.cfg.tracking.mlflow_uri
    key = f"mlflow-{plan.stage}"
    link = mlflow_runs.ui_link(tracking, exp_id, run_id)
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
    run_id, exp_id = _record(plan, run, parent_run_id, started_ms, upstream_uri)
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
    resume_model_upload(plan, result)
    return result, state.name == "Cached"
