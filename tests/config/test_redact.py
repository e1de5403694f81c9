"""Secrets in URIs never reach what a run records: stage.json, MLflow params (stage and training runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wrinklefree_core.config.redact import redact, redact_text

SECRET = "s3cr3t-value"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"https://alice:{SECRET}@mlflow.example:5000/", "https://alice:***@mlflow.example:5000/"),
        (f"http://{SECRET}@host/api", "http://***@host/api"),
        (f"https://storage.googleapis.com/b/o?X-Goog-Signature={SECRET}&X-Goog-Date=1", "https://storage.googleapis.com/b/o?X-Goog-Signature=***&X-Goog-Date=1"),
        (f"https://host/x?token={SECRET}", "https://host/x?token=***"),
        (f"https://host/x?api_key={SECRET}&page=2", "https://host/x?api_key=***&page=2"),
    ],
)
def test_uri_secrets_are_masked_and_the_rest_kept(uri: str, shown: str):
    assert redact_text(uri) == shown
    assert redact_text(f"tracking at {uri} failed") == f"tracking at {shown} failed"


@pytest.mark.parametrize("plain", ["gs://bucket/runs/a", "http://127.0.0.1:5000", "sqlite:////tmp/mlflow.db", "/data/x@y", "user@example.com", ""])
def test_uris_without_secrets_are_unchanged(plain: str):
    assert redact_text(plain) == plain


def test_nested_values_are_walked():
    value = {"tracking": {"mlflow_uri": f"http://u:{SECRET}@h"}, "list": [f"https://h/?sig={SECRET}", 3, None], "n": 1.5}
    assert SECRET not in json.dumps(redact(value))
    assert redact(value)["n"] == 1.5 and redact(value)["list"][1:] == [3, None]


def test_a_real_convert_logging_to_a_server_keeps_no_secret(tmp_path: Path, mlflow_server):
    from mlflow import MlflowClient

    server, _ = mlflow_server
    out = tmp_path / "converted"
    uri = server.replace("http://", f"http://alice:{SECRET}@") + "/"  # the server ignores the login
    proc = subprocess.run(
        [sys.executable, "-m", "wrinklefree_core.cli", "convert", "model=tiny_llama", f"out={out}", f"tracking.mlflow_uri={uri}",
         "tracking.experiment=redact-convert"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (out / "stage.json").read_text()
    assert SECRET not in text and f"http://alice:***@{server.removeprefix('http://')}/" in text
    assert SECRET not in proc.stdout + proc.stderr
    client = MlflowClient(server)
    (run,) = client.search_runs([client.get_experiment_by_name("redact-convert").experiment_id])
    assert SECRET not in json.dumps([run.data.params, run.data.tags])
    logged = Path(client.download_artifacts(run.info.run_id, "stage.json", str(tmp_path / "down")))
    assert SECRET not in logged.read_text()


def test_mlflow_params_keep_no_secret(tmp_path: Path):
    from mlflow import MlflowClient

    from tasks.mlflow_runs import log_params
    from wrinklefree_core.stages.base import get
    from wrinklefree_core.training.tracking import log_config

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("redact", artifact_location=str(tmp_path / "art")))
    log_params(client, run.info.run_id, {"tracking.mlflow_uri": f"https://bob:{SECRET}@h/", "lr": "0.1"})
    params = client.get_run(run.info.run_id).data.params
    assert params == {"tracking.mlflow_uri": "https://bob:***@h/", "lr": "0.1"}

    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="redact-train", tracking_uri=store, artifact_location=str(tmp_path / "art2"))
    log_config(logger, {"tracking": {"mlflow_uri": f"https://bob:{SECRET}@h/"}, "teacher": f"https://h/m?token={SECRET}"}, get("distill").tracked)
    params = MlflowClient(store).get_run(logger.run_id).data.params
    assert SECRET not in json.dumps(params) and params["teacher"] == "https://h/m?token=***"
    assert "tracking.mlflow_uri" not in params  # where a run is logged is not a param of the stage
