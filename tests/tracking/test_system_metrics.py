"""Training runs get MLflow's system metrics, at least one sample even when the stage is shorter than an interval."""

from __future__ import annotations

import time

from wrinklefree_core.tracking.system_metrics import system_metrics


def test_a_short_block_still_logs_one_sample(mlflow_client, run_id, store):
    with system_metrics(run_id, store, interval_s=30):
        time.sleep(0.2)
    metrics = mlflow_client.get_run(run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_samples_every_interval(mlflow_client, run_id, store):
    with system_metrics(run_id, store, interval_s=0.2):
        time.sleep(1.5)
    steps = [m.step for m in mlflow_client.get_metric_history(run_id, "system/system_memory_usage_megabytes")]
    assert len(steps) >= 3 and steps == sorted(set(steps))


def test_disabled_logs_nothing(mlflow_client, run_id, store):
    with system_metrics(run_id, store, interval_s=0.1, enabled=False):
        time.sleep(0.3)
    assert not [k for k in mlflow_client.get_run(run_id).data.metrics if k.startswith("system/")]
