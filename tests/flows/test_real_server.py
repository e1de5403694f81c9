"""The deployments on a real Prefect server with a real process worker, both on loopback.

scripts/serve_prefect.sh starts `prefect server start` on a free port (PREFECT_HOME in a temporary
folder, so the server's database is fresh), creates the process work pool, registers every
deployment of deploy/prefect.yaml with `prefect --no-prompt deploy --all`, and starts the worker;
its `stop` ends the worker, then the server, by their recorded PIDs. Then:
- `prefect deployment run 'full-pipeline/smoke' --watch` completes. It reuses the outputs of the
  harness test's smoke run (same cache folder and out root), so every stage is a cache hit read by
  a different process: the persisted-results contract, end to end.
- a single-stage rerun from an upstream URI (`train/default` on the pipeline's convert output with
  a changed typed `training.max_steps`, nested under the pipeline's MLflow run) completes and
  really trains, in the worker's flow-run subprocess.
- the registered deployments carry the typed parameter schema (the UI's form: TrainingConfig's
  fields with the recipe's values), and the server refuses a run whose form has an invalid field.
Every subprocess has a timeout, so a hung server fails the test instead of the session.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.mlflow_runs import PARENT_TAG, store_uri
from tasks.stage_plan import STAGES

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "scripts" / "serve_prefect.sh"
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logs(home: Path) -> str:
    folder = home / "wrinklefree-serve"
    parts = []
    for name in ("server.log", "deploy.log", "worker.log"):
        if (folder / name).is_file():
            parts.append(f"--- {name}\n" + (folder / name).read_text(errors="replace")[-3000:])
    return "\n".join(parts)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[dict[str, str], Path]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_PORT=str(port),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_BIN=PREFECT,
        SERVER_ARGS="--no-ui --no-scheduler",  # manual runs only: no nightly run can sneak in
        PREFECT_WORKER_QUERY_SECONDS="2",
        STOP_GRACE_S="3",  # nothing is running by then; see the script for the escalation
    )
    try:
        start = subprocess.run([str(SERVE), "start"], env=env, capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stdout + start.stderr + logs(home)
        yield env, home
    finally:
        subprocess.run([str(SERVE), "stop"], env=env, capture_output=True, text=True, timeout=120)


def prefect(env: dict[str, str], *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_deployments_run_on_a_real_server(served, smoke_run, out_root):
    env, home = served
    listed = prefect(env, "deployment", "ls", timeout=120)
    for name in ("full-pipeline/default", "full-pipeline/smoke", "nightly-smoke/nightly", *(f"{s}/default" for s in STAGES)):
        assert name in listed.stdout, (name, listed.stdout)

    train = json.loads(prefect(env, "deployment", "inspect", "train/default", "--output", "json", timeout=120).stdout)
    schema = train["parameter_openapi_schema"]
    assert schema["properties"]["training"]["default"]["lambda_warmup"]["steps"] == 20  # configs/training/unified.yaml
    assert schema["definitions"]["OptimizerConfig"]["properties"]["type"]["enum"] == ["adamw", "muon", "muonclip"]
    bad = {"upstream_uri": "unused", "training": {"optimizer": {"lr": -1.0}}}
    refused = prefect(env, "deployment", "run", "train/default", "--params", json.dumps(bad), timeout=120)
    assert refused.returncode != 0 and "lr" in refused.stdout + refused.stderr, refused.stdout + refused.stderr

    before = json.loads((out_root / "pipeline.json").read_text())["flow_run_id"]
    params = {"params": {"model": "tiny_llama", "smoke": True, "out_root": str(out_root)}}
    run = prefect(env, "deployment", "run", "full-pipeline/smoke", "--params", json.dumps(params), "--watch", "--watch-timeout", "360")
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:] + logs(home)
    summary = json.loads((out_root / "pipeline.json").read_text())
    assert summary["flow_run_id"] not in (before, smoke_run["flow_run_id"])
    assert all(s["cached"] for s in summary["stages"].values()), {k: v["cached"] for k, v in summary["stages"].items()}

    convert_uri = summary["stages"]["convert"]["uri"]
    rerun = {
        "upstream_uri": convert_uri,
        "training": {"max_steps": 2},  # a partial section: the unified recipe with 2 steps
        "smoke": True,
        "out_root": str(out_root),
        "parent_run_id": summary["mlflow_run_id"],
    }
    run = prefect(env, "deployment", "run", "train/default", "--params", json.dumps(rerun), "--watch", "--watch-timeout", "360")
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:] + logs(home)

    client = MlflowClient(store_uri(None))
    experiment = client.get_experiment_by_name("wrinklefree")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.pipeline_stage = 'train' and params.`training.max_steps` = '2'"
    )
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].data.tags[PARENT_TAG] == summary["mlflow_run_id"]
    folder = Path(runs[0].data.tags["artifact_uri"])
    manifest = json.loads((folder / "stage.json").read_text())
    assert manifest["config"]["checkpoint"] == convert_uri and manifest["metrics"]["step"] == 2
