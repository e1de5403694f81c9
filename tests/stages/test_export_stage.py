"""The export stage through the real command line: GGUF verified in llama.cpp, HF folder, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stages.test_convert_stage import wrinklefree
from wrinklefree_core.stages.manifest import read_manifest


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
