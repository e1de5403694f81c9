"""The export stage through the real command line: GGUF verified in llama.cpp, HF folder, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stages.test_convert_stage import wrinklefree
from wrinklefree_core.artifacts.manifest import read_manifest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny256"
    proc = wrinklefree("convert", "model=tiny_llama_256", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    return out


def test_gguf_export_is_verified_and_documented(checkpoint: Path, tmp_path):
    out = tmp_path / "gguf" / "tiny.gguf"
    proc = wrinklefree("export", f"checkpoint={checkpoint}", "format=gguf", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "TQ2_0" in proc.stdout and "verified in llama.cpp: passed" in proc.stdout
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    verification = json.loads((out.parent / "verification.json").read_text())
    assert verification["passed"] and verification["tokens_match"] and verification["gguf"] == out.name
    manifest = read_manifest(out.parent)
    assert manifest.stage == "export" and manifest.inputs["checkpoint"] == str(checkpoint)
    assert manifest.metrics["size_vs_f16"] < 0.5
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "export_report.txt", "llama_cpp.log", "stage.json", "tiny.gguf", "verification.json",
    ]
    # A healthy export prints its summary, not llama.cpp's log nor the per-tensor table.
    assert "blk.0.attn_q.weight" not in proc.stdout and "blk.0.attn_q.weight" in (out.parent / "export_report.txt").read_text()
    assert "llama_model_loader" not in proc.stdout + proc.stderr
    assert "llama_model_loader" in (out.parent / "llama_cpp.log").read_text()


def test_tq1_export(checkpoint: Path, tmp_path):
    out = tmp_path / "tq1.gguf"
    proc = wrinklefree("export", f"checkpoint={checkpoint}", "export.ternary_type=tq1_0", f"out={out}", "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["file_bytes"] == out.stat().st_size


def test_hf_export_loads_in_stock_transformers(checkpoint: Path, tmp_path):
    from transformers import AutoModelForCausalLM, BitNetForCausalLM

    out = tmp_path / "hf"
    proc = wrinklefree("export", f"checkpoint={checkpoint}", "format=hf", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    assert type(AutoModelForCausalLM.from_pretrained(out)) is BitNetForCausalLM
    assert read_manifest(out).stage == "export"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "x.gguf"
    proc = wrinklefree("export", f"checkpoint={tmp_path / 'nope'}", f"out={out}")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "nope" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_corrupt_weights_leave_no_output(checkpoint: Path, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out" / "x.gguf"
    proc = wrinklefree("export", f"checkpoint={broken}", f"out={out}")
    assert proc.returncode == 2
    assert "model.safetensors" in proc.stderr
    assert not out.exists() and not any(out.parent.glob("*")) if out.parent.exists() else True


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_export_logs_its_run_and_registers_the_gguf(checkpoint: Path, tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "gguf" / "tiny.gguf"
    proc = wrinklefree("export", f"checkpoint={checkpoint}", f"out={out}", f"tracking.mlflow_uri={store}", "tracking.experiment=cli")
    assert proc.returncode == 0, proc.stderr
    assert "MLflow: registered wrinklefree-tiny_llama_256 version 1" in proc.stdout  # named by the checkpoint's source model
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("5-export-tiny_llama_256")
    assert run.data.tags["out"] == str(out) and run.data.tags["mlflow.source.name"] == "wrinklefree export"
    assert run.data.params["export.ternary_type"] and "training.max_steps" not in run.data.params
    assert run.data.metrics["verify_passed"] == 1.0 and run.data.metrics["verify_top1_agreement"] >= 0.95
    assert (run.info.end_time - run.info.start_time) / 1000 >= 0.9 * run.data.metrics["export_seconds"]
    version = client.get_model_version("wrinklefree-tiny_llama_256", "1")
    assert version.source == f"runs:/{run.info.run_id}/gguf" and version.tags["verify_passed"] == "1"
    got = Path(client.download_artifacts(run.info.run_id, "gguf/tiny.gguf", str(tmp_path)))
    assert _sha(got) == _sha(out)


def test_cli_export_without_upload_records_the_path_only(checkpoint: Path, tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "gguf" / "tiny.gguf"
    proc = wrinklefree("export", f"checkpoint={checkpoint}", f"out={out}", f"tracking.mlflow_uri={store}", "tracking.model_upload=false")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("wrinklefree").experiment_id])
    assert run.data.tags["gguf_uri"] == str(out) and run.data.tags["wrinklefree.model_upload"].startswith("off")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"stage.json", "verification.json"}
    assert client.search_registered_models() == []


def test_unreachable_tracking_server_is_refused_before_any_work(checkpoint: Path, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = tmp_path / "gguf" / "tiny.gguf"
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    proc = subprocess.run(
        [sys.executable, "-m", "wrinklefree_core.cli", "export", f"checkpoint={checkpoint}", f"out={out}", f"tracking.mlflow_uri=http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"error: the MLflow store http://127.0.0.1:{port} cannot be used" in proc.stderr and "drop tracking.mlflow_uri" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.parent.exists()
