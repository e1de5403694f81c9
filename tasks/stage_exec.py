"""Executing a planned stage: in this process, or as a SkyPilot job running the same CLI.

Local (compute.backend=local): the stage function runs here with the planned URIs; the stage itself
downloads gs:// inputs (cached) and publishes a gs:// output with its completion marker
(wrinklefree_core/artifacts/io.py), exactly as `wrinklefree <stage> out=gs://...` does.

SkyPilot (compute.backend=skypilot): tasks/skypilot_task.py builds the job (`wrinklefree <stage>
... compute.backend=local` on the node) and tasks/skypilot_launch.py runs it to the end. gs:// URIs
of the configured bucket are handed to the job as their mount paths (/checkpoints/...); the job
declares the mount (WRINKLEFREE_BUCKET_MOUNTS), so the stage seals its output with the completion
marker after writing it. When the job is done, the marker is required (a folder without one is a
partial artifact) and stage.json (metrics) and verification.json are read back from the bucket; the
artifact itself stays there. Both modules are imported only here, so local runs never import SkyPilot.

Every stage nests its MLflow run under the run named in WRINKLEFREE_MLFLOW_PARENT_RUN_ID: set
around the in-process call, and passed into the SkyPilot job's environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.mlflow_runs import PARENT_RUN_ENV
from tasks.stage_plan import StagePlan, StageUnavailableError
from wrinklefree_core.stages import base as stage_registry
from wrinklefree_core.uri import is_gcs


@dataclass
class StageRun:
    """What executing a stage produced, as far as the recorder needs it."""

    metrics: dict[str, float]
    summary: str
    local_out: Path | None  # a local copy of the artifact (for MLflow artifacts), when there is one
    logged_out: str | None  # the `out` the stage itself saw (training runs tag their MLflow run with it)


@contextmanager
def parent_env(parent_run_id: str | None) -> Iterator[None]:
    """Set WRINKLEFREE_MLFLOW_PARENT_RUN_ID for the duration of an in-process stage; restore it after."""
    old = os.environ.get(PARENT_RUN_ENV)
    if parent_run_id:
        os.environ[PARENT_RUN_ENV] = parent_run_id
    else:
        os.environ.pop(PARENT_RUN_ENV, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = old


def run_local(plan: StagePlan, parent_run_id: str | None) -> StageRun:
    """Run the stage in this process (module docstring)."""
    from wrinklefree_core.console import quiet_libraries

    quiet_libraries()
    cfg = plan.cfg.model_copy(update={"out": plan.out_uri})
    with parent_env(parent_run_id):
        result = stage_registry.get(plan.stage).run(cfg)
    return StageRun(dict(result.metrics), result.summary, Path(result.out), result.location)


def run_skypilot(plan: StagePlan, parent_run_id: str | None, log: Callable[[str], None]) -> StageRun:
    """Run the stage as a SkyPilot job and read its output back (module docstring)."""
    try:
        from tasks.skypilot_launch import launch_stage
        from tasks.skypilot_task import build_sky_task, default_cluster_name, mount_path_for
    except ImportError as exc:
        raise StageUnavailableError(
            f"compute.backend=skypilot needs tasks/skypilot_task.py, tasks/skypilot_launch.py and skypilot ({exc}); "
            "use compute=local meanwhile"
        ) from exc
    from wrinklefree_core.artifacts.manifest import read_manifest

    cfg = plan.cfg

    def on_cluster(uri: str | None) -> str | None:
        return mount_path_for(uri, cfg) if uri and is_gcs(uri) else uri

    out, checkpoint = on_cluster(plan.out_uri), on_cluster(cfg.checkpoint)
    items = [*plan.items, f"out={out}"] + ([f"checkpoint={checkpoint}"] if checkpoint else [])
    job_cfg = cfg.model_copy(update={"out": out, "checkpoint": checkpoint})
    envs = {PARENT_RUN_ENV: parent_run_id} if parent_run_id else {}
    sky_task = build_sky_task(job_cfg, plan.stage, items, envs=envs)
    launched = launch_stage(
        sky_task, default_cluster_name(plan.stage, plan.key[:8]), stream_logs=log, teardown=cfg.compute.teardown
    )
    folder = fetch_records(plan) if is_gcs(plan.folder_uri) else Path(plan.folder_uri)
    metrics = dict(read_manifest(folder).metrics)
    summary = f"SkyPilot job {launched.job_id} on {launched.cluster_name} finished in {launched.seconds:.0f} s"
    return StageRun(metrics, summary, folder, out)


def fetch_records(plan: StagePlan) -> Path:
    """stage.json and verification.json of a sealed gs:// output, copied into a scratch folder.

    Only these two small files are read (the recorder needs nothing else); the whole artifact stays
    in the bucket. Raises IncompleteUploadError when the output has no completion marker.
    """
    from wrinklefree_core.paths import cache_dir
    from wrinklefree_core.artifacts.manifest import MANIFEST_NAME
    from wrinklefree_core.storage.gcs import GCSStore, IncompleteUploadError
    from wrinklefree_core.uri import parse_uri

    uri = parse_uri(plan.folder_uri)
    store = GCSStore(plan.cfg.gcs)
    if not store.is_complete(uri):
        raise IncompleteUploadError(
            f"the SkyPilot job finished but {plan.folder_uri} has no completion marker, so it is a partial "
            "artifact (the job did not seal it); re-run the stage"
        )
    bucket = store.client.bucket(uri.bucket)
    dest = cache_dir() / "staging" / "skypilot" / plan.key[:16]
    dest.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST_NAME, "verification.json"):
        blob = bucket.blob(uri.object_name(name))
        if blob.exists():
            blob.download_to_filename(str(dest / name))
    if not (dest / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"the SkyPilot job finished but {plan.folder_uri}/{MANIFEST_NAME} does not exist")
    return dest
