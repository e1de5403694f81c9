"""compute.backend=skypilot inside the stage task, without a cloud: the job it builds and what it reads back.

SkyPilot cannot launch anything here (no credentials, no internet), so `launch_stage` is replaced by
a recorder that also plays the job's part in the bucket (a sealed output with its stage.json). The
bucket is the real fake-gcs-server emulator, so the upstream digest and the read-back of the
records run as they would against GCS; the sky.Task itself is the real one.
"""

from __future__ import annotations

from pathlib import Path

import tasks.stage_exec as stage_exec
import tasks.stage_plan as stage_plan
from tasks.mlflow_runs import PARENT_RUN_ENV
from tests.storage.conftest import bucket, emulator, emulator_server  # noqa: F401 - fixtures
from wrinklefree_core.artifacts.manifest import build_manifest, manifest_json
from wrinklefree_core.storage.gcs import GCSStore


def test_skypilot_stage_runs_the_cli_on_mounted_paths(monkeypatch, tmp_path: Path, bucket: str):  # noqa: F811
    import tasks.skypilot_launch as skypilot_launch

    store = GCSStore()
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "stage.json").write_text(manifest_json(build_manifest("train", {}, {}, {"loss": 3.0})))
    store.upload_folder(upstream, f"gs://{bucket}/runs/train/abc")
    launched = {}

    def fake_launch(task, cluster_name, **kwargs):
        launched.update(task=task, cluster=cluster_name, **kwargs)
        # What the job leaves in the bucket: its sealed output, stage.json included.
        job_out = tmp_path / "job-out"
        job_out.mkdir()
        (job_out / "stage.json").write_text(manifest_json(build_manifest("lrc", {}, {}, {"loss": 2.5})))
        store.upload_folder(job_out, plan.folder_uri)
        return skypilot_launch.LaunchResult(cluster_name, job_id=7, attempts=1, seconds=12.0)

    monkeypatch.setattr(skypilot_launch, "launch_stage", fake_launch)

    overrides = ["model=tiny_llama", "compute=skypilot_h100", f"gcs.bucket={bucket}", "training.max_steps=5"]
    plan = stage_plan.plan_stage("lrc", overrides, f"gs://{bucket}/runs/train/abc", f"gs://{bucket}/runs")
    assert plan.out_uri == f"gs://{bucket}/runs/lrc/{plan.key[:12]}"
    lines: list[str] = []
    run = stage_exec.run_skypilot(plan, "parent-run-1", lines.append)

    task = launched["task"]
    assert f"out=/checkpoints/runs/lrc/{plan.key[:12]}" in task.run
    assert "checkpoint=/checkpoints/runs/train/abc" in task.run
    assert "wrinklefree train" in task.run and "training=lrc_calibration" in task.run
    assert "training.max_steps=5" in task.run and task.run.rstrip().endswith("compute.backend=local")
    assert task.envs[PARENT_RUN_ENV] == "parent-run-1"
    assert launched["teardown"] is True and launched["cluster"].startswith("wf-lrc-")
    assert run.metrics == {"loss": 2.5}
    assert run.logged_out == f"/checkpoints/runs/lrc/{plan.key[:12]}"


def test_skypilot_refuses_local_outputs(monkeypatch):
    import pytest

    plan = stage_plan.plan_stage("convert", ["model=tiny_llama", "compute=skypilot_h100"], None, "/tmp/somewhere")
    with pytest.raises(ValueError, match="deleted with the cluster"):
        stage_exec.run_skypilot(plan, None, print)
