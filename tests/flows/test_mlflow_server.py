"""The pipeline logging to a real `mlflow server` (loopback, proxied artifacts), read back as its users would.

The session's server (tests/conftest.py `mlflow_server`: a fresh sqlite store, its own artifact
folder) is used by URI; the smoke pipeline runs
against it by URI (its own out root, so every stage runs and uploads over HTTP). Then:
- the registered version `models:/wrinklefree-tiny_llama/<n>` downloads through the MLflow client,
  byte for byte the exported files, and the downloaded GGUF + LoRA run in llama.cpp with the same
  logits as the local files;
- in headless Chromium (Debian's, driven by Playwright) the MLflow UI shows the pipeline run with its
  five child runs in order, the training run's loss chart, the export run's GGUF with a download
  button that gives the file, and the model version with the eval table; no page asks for anything
  off the machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tasks.stage_plan import STAGES

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh installs it)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
UI_QUERY = "?workflowType=machine_learning"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server_run(harness, mlflow_server, tmp_path_factory) -> dict:
    from flows.full_pipeline import full_pipeline
    from flows.params import smoke_params

    uri, _ = mlflow_server
    return full_pipeline(smoke_params(out_root=str(tmp_path_factory.mktemp("pipeline-on-server")), tracking_uri=uri))


def _greedy(gguf: Path, lora: Path, tokens: int = 8) -> tuple[list[int], np.ndarray]:
    from llama_cpp import Llama

    model = Llama(model_path=str(gguf), lora_path=str(lora), n_ctx=64, n_threads=1, logits_all=True, verbose=False, seed=0)
    try:
        ids = model.tokenize(b"To be, or not to be", add_bos=True)
        model.eval(ids)
        first = np.array(model.scores[len(ids) - 1], dtype=np.float32)
        out = []
        for _ in range(tokens):
            nxt = int(np.argmax(model.scores[model.n_tokens - 1]))
            out.append(nxt)
            model.eval([nxt])
        return out, first
    finally:
        model.close()


def test_registered_gguf_downloads_from_the_server_and_runs_in_llamacpp(server_run, mlflow_server, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri, artifacts = mlflow_server
    name, _, version = server_run["model_version"].rpartition("/")
    assert name == "wrinklefree-tiny_llama"
    export = server_run["stages"]["export"]
    run = MlflowClient(uri).get_run(export["mlflow_run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the files went over HTTP
    local = Path(export["uri"])
    local_lora = local.with_name(f"{local.stem}.lora.gguf")
    stored = list(artifacts.rglob(local.name))
    assert len(stored) == 1 and _sha(stored[0]) == _sha(local)

    source = MlflowClient(uri).get_model_version_download_uri(name, version)  # the registry's answer, through the server
    got = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path), tracking_uri=uri))
    assert sorted(p.name for p in got.iterdir()) == sorted([local.name, local_lora.name])
    assert _sha(got / local.name) == _sha(local) and _sha(got / local_lora.name) == _sha(local_lora)

    downloaded, first = _greedy(got / local.name, got / local_lora.name)
    original, first_local = _greedy(local, local_lora)
    assert np.isfinite(first).all() and len(downloaded) == 8
    assert downloaded == original and np.array_equal(first, first_local)


def test_mlflow_ui_shows_the_pipeline_in_a_browser(server_run, mlflow_server, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium (apt-get install chromium)"
    uri, _ = mlflow_server
    client = MlflowClient(uri)
    parent = client.get_run(server_run["mlflow_run_id"])
    exp = parent.info.experiment_id
    runs = {stage: client.get_run(r["mlflow_run_id"]) for stage, r in server_run["stages"].items()}
    gguf = Path(server_run["stages"]["export"]["uri"])
    name, _, version = server_run["model_version"].rpartition("/")
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1100}, accept_downloads=True)
        page.on("request", lambda request: requested.append(request.url))

        # The experiment opens on its runs (the training view), the pipeline run among them.
        page.goto(f"{uri}/#/experiments/{exp}{UI_QUERY}")
        page.get_by_text(parent.info.run_name[:20]).first.wait_for(timeout=60_000)
        assert "/runs" in page.url

        # The pipeline run: its five stage runs as children, in pipeline order by name.
        page.goto(f"{uri}/#/experiments/{exp}/runs/{parent.info.run_id}{UI_QUERY}")
        page.get_by_text("Child runs", exact=True).wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert parent.info.run_name in text
        for stage in STAGES:
            page.get_by_text(runs[stage].info.run_name, exact=False).first.wait_for(timeout=10_000)
        assert parent.data.tags["mlflow.source.git.commit"][:7] in text  # the code version, shown

        # The training run's loss chart (the PNG artifact renders as an image).
        page.goto(f"{uri}/#/experiments/{exp}/runs/{runs['train'].info.run_id}/artifacts{UI_QUERY}")
        page.get_by_text("loss_curve.png", exact=True).first.click()
        image = page.locator("img[src*='loss_curve.png'], img[src^='blob:']").first
        image.wait_for(timeout=30_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle(), timeout=30_000)

        # The export run's GGUF: listed, and its download button gives the file.
        page.goto(f"{uri}/#/experiments/{exp}/runs/{runs['export'].info.run_id}/artifacts{UI_QUERY}")
        page.get_by_text("gguf", exact=True).first.click()
        page.get_by_text(gguf.name, exact=True).first.click()
        header = page.get_by_text(f"gguf/{gguf.name}", exact=True)
        header.wait_for(timeout=30_000)
        with page.expect_download(timeout=60_000) as download:
            header.locator("xpath=ancestor::div[4]").locator("button").first.click()
        saved = tmp_path / "from-browser.gguf"
        download.value.save_as(saved)
        assert _sha(saved) == _sha(gguf)

        # The registered version, with the eval table and the verdict.
        page.goto(f"{uri}/#/models/{name}/versions/{version}{UI_QUERY}")
        page.get_by_text(f"Version {version}", exact=True).first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert "export-gguf" in text and server_run["verdict"][:60] in text.replace("\n", " ")
        browser.close()
    off_machine = sorted({u.split("?")[0] for u in requested if not u.startswith((uri, "data:", "blob:"))})
    assert off_machine == [], off_machine
