"""compute.backend=skypilot inside the stage task, without a cloud: the job it builds and what it reads back.

SkyPilot cannot launch anything here (no credentials, no internet), so `launch_stage` is replaced by
a recorder and the bucket read-back by a local stage.json; the sky.Task itself is the real one.
"""

from __future__ import annotations

from pathlib import Path

import tasks.stage_exec as stage_exec
import tasks.stage_plan as stage_plan
from tasks.mlflow_runs import PARENT_RUN_ENV
from wrinklefree_core.stages.manifest import build_manifest, manifest_json


def test_skypilot_stage_runs_the_cli_on_mounted_paths(monkeypatch, tmp_path: Path):
    import tasks.skypilot_launch as skypilot_launch

    monkeypatch.setattr(stage_plan, "remote_digest", lambda uri, cfg=None: "digest-of-" + uri)
    launched = {}

    def fake_launch(task, cluster_name, **kwargs):
        launched.update(task=task, cluster=cluster_name, **kwargs)
        return skypilot_launch.LaunchResult(cluster_name, job_id=7, attempts=1, seconds=12.0)

    def fake_fetch(plan):
        (tmp_path / "stage.json").write_text(manifest_json(build_manifest("train", {}, {}, {"loss": 2.5})))
        return tmp_path

    monkeypatch.setattr(skypilot_launch, "launch_stage", fake_launch)
    monkeypatch.setattr(stage_exec, "fetch_records", fake_fetch)

    overrides = ["model=tiny_llama", "compute=skypilot_h100", "gcs.bucket=wf-bucket", "training.max_steps=5"]
    plan = stage_plan.plan_stage("lrc", overrides, "gs://wf-bucket/runs/train/abc", "gs://wf-bucket/runs")
    assert plan.out_uri == f"gs://wf-bucket/runs/lrc/{plan.key[:12]}"
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
