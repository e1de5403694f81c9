"""The deployments on a real Prefect server with a real process worker, both on loopback.

scripts/serve_prefect.sh starts `prefect server start` on a free port (PREFECT_HOME in a temporary
folder, so the server's database is fresh), creates the process work pool, registers every
deployment of deploy/prefect.yaml with `prefect --no-prompt deploy --all`, and starts the worker;
its `stop` ends the worker, then the server, by their recorded PIDs. Then:
- `prefect deployment run 'full-pipeline/smoke' --watch` completes. It reuses the outputs of the
  harness test's smoke run (same cache folder and out root), so every stage is a cache hit read by
  a different process: the persisted-results contract, end to end.
- a single-stage rerun from an upstream URI (`train/train-stage` on the pipeline's convert output
  with a changed typed `training.max_steps`, nested under the pipeline's MLflow run) completes and
  really trains, in the worker's flow-run subprocess.
- the registered deployments carry the typed parameter schema (the UI's form: TrainingConfig's
  fields with the values that run), and the server refuses a run whose form has an invalid field.
- in headless Chromium (Debian's, driven by Playwright), the Prefect UI lists the deployments with
  their descriptions, the smoke pipeline's form shows the smoke budget, and a stage's form keeps
  its descriptions whole; one field changed and submitted gives a flow run whose parameters amount
  to exactly that override. No page asks for anything off the machine, and the nightly deployment
  has one upcoming run.
Every subprocess has a timeout, so a hung server fails the test instead of the session.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import subprocess
import time
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
        SERVER_ARGS="",  # the UI for the browser test, the scheduler for the nightly's upcoming run
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
    for name in ("full-pipeline/default", "full-pipeline/smoke", "nightly-smoke/nightly", *(f"{s}/{s}-stage" for s in STAGES)):
        assert name in listed.stdout, (name, listed.stdout)

    train = json.loads(prefect(env, "deployment", "inspect", "train/train-stage", "--output", "json", timeout=120).stdout)
    schema = train["parameter_openapi_schema"]
    assert schema["properties"]["training"]["default"]["lambda_warmup"]["steps"] == 20  # configs/training/unified.yaml
    assert schema["definitions"]["OptimizerConfig"]["properties"]["type"]["enum"] == ["adamw", "muon", "muonclip"]
    bad = {"upstream_uri": "unused", "training": {"optimizer": {"lr": -1.0}}}
    refused = prefect(env, "deployment", "run", "train/train-stage", "--params", json.dumps(bad), timeout=120)
    assert refused.returncode != 0 and "lr" in refused.stdout + refused.stderr, refused.stdout + refused.stderr

    before = json.loads((out_root / "pipeline.json").read_text())["flow_run_id"]
    params = {"params": {"out_root": str(out_root)}}  # the rest: the smoke preset's defaults
    run = prefect(env, "deployment", "run", "full-pipeline/smoke", "--params", json.dumps(params), "--watch", "--watch-timeout", "360")
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:] + logs(home)
    summary = json.loads((out_root / "pipeline.json").read_text())
    assert summary["flow_run_id"] not in (before, smoke_run["flow_run_id"])
    assert all(s["cached"] for s in summary["stages"].values()), {k: v["cached"] for k, v in summary["stages"].items()}

    convert_uri = summary["stages"]["convert"]["uri"]
    rerun = {
        "upstream_uri": convert_uri,
        "training": {"max_steps": 2, "seq_len": 32},  # a partial section: the unified recipe with 2 steps
        "out_root": str(out_root),
        "parent_run_id": summary["mlflow_run_id"],
    }
    run = prefect(env, "deployment", "run", "train/train-stage", "--params", json.dumps(rerun), "--watch", "--watch-timeout", "360")
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


CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh installs it)
# Headless on a machine with no screen and a closed network: no sandbox (root), no background calls.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def api(env: dict[str, str], method: str, path: str, body: dict | None = None):
    import urllib.request

    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def form_property(scope, page, label: str):
    """The innermost form property labelled `label` (a group or a field) inside `scope`."""
    return scope.locator("div.schema-form-property", has=page.get_by_text(f"{label} (Optional)", exact=True)).last


def field_value(group, page, label: str) -> str:
    return form_property(group, page, label).locator("input, textarea").first.input_value()


def test_prefect_ui_forms_in_a_browser(served, smoke_run):
    from playwright.sync_api import sync_playwright

    from flows.params import PipelineParams
    from flows.sections import context_config
    from flows.stage_params import STAGE_PARAMS

    TrainParams = STAGE_PARAMS["train"]

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium (apt-get install chromium)"
    env, home = served
    base = env["PREFECT_API_URL"].removesuffix("/api")
    deployments = {f"{d['name']}": d for d in api(env, "POST", "/deployments/filter", {})}
    train = deployments["train-stage"]
    convert_uri = smoke_run["stages"]["convert"]["uri"]
    shown_steps = str(context_config("train").training.max_steps)

    # One upcoming nightly run (the scheduler's default keeps three); then no nightly during the tests.
    nightly = deployments["nightly"]
    deadline = time.monotonic() + 90
    while not (runs := api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [nightly["id"]]}}})):
        assert time.monotonic() < deadline, "the scheduler made no nightly run in 90 s" + logs(home)
        time.sleep(2)
    time.sleep(8)  # a scheduler pass that would add more has had its chance
    runs = api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [nightly["id"]]}}})
    api(env, "PATCH", f"/deployments/{nightly['id']}", {"paused": True})
    assert len(runs) == 1 and runs[0]["state_type"] == "SCHEDULED", [(r["name"], r["expected_start_time"]) for r in runs]

    assert prefect(env, "work-pool", "pause", "wrinklefree-local", timeout=60).returncode == 0  # the submitted run stays scheduled
    requested: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("request", lambda request: requested.append(request.url))

            page.goto(f"{base}/deployments")
            page.get_by_text("train-stage").first.wait_for(timeout=60_000)
            listing = page.inner_text("body")
            for name in (*(f"{s}-stage" for s in STAGES), "smoke", "nightly"):
                assert name in listing, (name, listing[:2000])

            page.goto(f"{base}/deployments/deployment/{deployments['smoke']['id']}/run")
            page.get_by_text("2 · train (Optional)", exact=True).wait_for(timeout=60_000)
            for stage in ("train", "lrc", "distill"):
                group = form_property(page, page, f"{stage} · training")
                assert (field_value(group, page, "Max Steps"), field_value(group, page, "Seq Len")) == ("3", "32"), stage

            page.goto(f"{base}/deployments/deployment/{train['id']}/run")
            page.get_by_text("training (Optional)", exact=True).wait_for(timeout=60_000)  # a flow's own parameters show their names
            text = page.inner_text("body")
            assert "its `uri` in out_root/pipeline.json" in text or "its uri in out_root/pipeline.json" in text, text[:3000]
            assert "the convert stage's output" in text
            training = form_property(page, page, "training")
            assert field_value(training, page, "Max Steps") == shown_steps
            assert field_value(form_property(page, page, "data"), page, "Config Name") == "python_docs"  # what runs
            form_property(page, page, "upstream_uri").locator("input, textarea").first.fill(convert_uri)
            form_property(training, page, "Max Steps").locator("input").first.fill("2")
            train_runs = {"deployments": {"id": {"any_": [train["id"]]}}}
            earlier = {run["id"] for run in api(env, "POST", "/flow_runs/filter", train_runs)}  # the CLI rerun's
            page.get_by_role("button", name="Submit").click()
            deadline = time.monotonic() + 60
            while not (runs := [r for r in api(env, "POST", "/flow_runs/filter", train_runs) if r["id"] not in earlier]):
                assert time.monotonic() < deadline, "no flow run after submitting the form"
                time.sleep(1)
            browser.close()
        assert len(runs) == 1
        parameters = runs[0]["parameters"]
        assert parameters["upstream_uri"] == convert_uri
        form = TrainParams.model_validate({k: parameters[k] for k in ("training", "data", "compute", "overrides")})
        assert PipelineParams(model="tiny_llama", train=form).form_items("train") == ["training.max_steps=2"]
        api(env, "DELETE", f"/flow_runs/{runs[0]['id']}")
    finally:
        prefect(env, "work-pool", "resume", "wrinklefree-local", timeout=60)
    off_machine = sorted({url.split("?")[0] for url in requested if not url.startswith((base, "data:", "blob:"))})
    assert off_machine == [], off_machine
