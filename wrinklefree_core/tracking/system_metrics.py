"""System metrics of a training run, sampled by MLflow's own monitor (CPU, memory, disk, network, GPU).

MLflow's SystemMetricsMonitor samples every `interval` seconds on a thread and logs
`system/<metric>` at steps 0, 1, ... A stage shorter than one interval would log nothing (the
monitor drops its partial sample when stopped), so a last sample is taken and logged on stop:
every monitored run has at least one point. A monitor that cannot start (psutil missing, a store
that refuses the writes) costs the run its system metrics, never the training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

_log = logging.getLogger(__name__)


@contextmanager
def system_metrics(run_id: str | None, tracking_uri: str, interval_s: float, enabled: bool = True) -> Iterator[None]:
    """Sample system metrics into run `run_id` while the block runs (nothing when disabled or without a run)."""
    if not enabled or not run_id:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        for name in ("mlflow.system_metrics", "mlflow.system_metrics.system_metrics_monitor"):
            logging.getLogger(name).setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - metrics are never worth a failed stage
        _log.warning("system metrics are off for this run: %s", exc)
        yield
        return
    try:
        yield
    finally:
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # noqa: BLE001
            _log.warning("could not log the last system-metrics sample: %s", exc)
