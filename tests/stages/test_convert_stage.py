"""The convert stage through its real command line: files another loader reads back, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wrinklefree_core.config import compose
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.models.convert import bitlinear_modules
from wrinklefree_core.models.sources import load_hf_model, materialize
from wrinklefree_core.models.conversion import convert_for_run
from wrinklefree_core.artifacts.manifest import read_manifest


def wrinklefree(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, exactly as the console script does."""
    return subprocess.run(
        [sys.executable, "-m", "wrinklefree_core.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def converted_qwen2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "tiny_qwen2-bitnet"
    proc = wrinklefree("convert", "model=tiny_qwen2", f"out={out}", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["out"]) == out
    return out


def test_convert_writes_a_complete_checkpoint(converted_qwen2: Path):
    names = {p.name for p in converted_qwen2.iterdir()}
    assert {"config.json", "model.safetensors", "stage.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.startswith(".") for n in names)
    config = json.loads((converted_qwen2 / "config.json").read_text())
    assert config["bitnet"]["subln"] == "bitdistill" and config["bitnet"]["quant_lambda"] == 1.0


def test_stage_manifest_records_config_inputs_metrics_versions(converted_qwen2: Path):
    manifest = read_manifest(converted_qwen2)
    assert manifest.stage == "convert"
    assert manifest.config["model"]["name"] == "tiny_qwen2"
    assert manifest.config["out"] == str(converted_qwen2)
    source = Path(manifest.inputs["source_model"])
    assert (source / "config.json").is_file(), "the teacher must be reloadable from stage.json"
    assert manifest.metrics["bitlinear_modules"] == 14  # 2 layers x 7 projections
    assert 0.0 < manifest.metrics["ternary_zero_fraction"] < 1.0
    assert manifest.versions["torch"] == torch.__version__.split("+")[0] or manifest.versions["torch"] == torch.__version__


def test_checkpoint_matches_in_memory_conversion(converted_qwen2: Path):
    """What the CLI wrote is what converting the source model in this process gives, bit for bit."""
    cfg = compose("convert", ["model=tiny_qwen2"])
    model, tokenizer = load_hf_model(materialize(cfg.model))
    convert_for_run(model, tokenizer, cfg)
    loaded, settings = load_bitnet_checkpoint(converted_qwen2)
    assert settings == cfg.bitnet
    ids = tokenizer("Now is the winter of our discontent", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert sum(isinstance(m, BitLinear) for m in loaded.modules()) == 14


def test_subln_gains_start_at_ones_unless_calibration_is_asked_for(converted_qwen2: Path, tmp_path):
    manifest = read_manifest(converted_qwen2)
    assert manifest.metrics["subln_calibration_rows"] == 0 and manifest.config["bitnet"]["subln_init"] == "ones"
    plain, _ = load_bitnet_checkpoint(converted_qwen2)
    subln = [m.sub_norm.weight for _, m in bitlinear_modules(plain) if m.sub_norm is not None]
    assert len(subln) == 4 and all(torch.equal(g, torch.ones_like(g)) for g in subln)

    out = tmp_path / "calibrated"
    proc = wrinklefree("convert", "model=tiny_qwen2", "bitnet.subln_init=calibrated", "bitnet.subln_calibration_rows=6", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    calibrated, settings = load_bitnet_checkpoint(out)
    assert settings.subln_init == "calibrated" and read_manifest(out).metrics["subln_calibration_rows"] == 6
    gains = [m.sub_norm.weight for _, m in bitlinear_modules(calibrated) if m.sub_norm is not None]
    assert not any(torch.equal(g, torch.ones_like(g)) for g in gains) and all(bool((g > 0).all()) for g in gains)


def test_gptq_init_writes_other_ternary_weights_and_says_how_it_went(converted_qwen2: Path, tmp_path):
    out = tmp_path / "gptq"
    proc = wrinklefree("convert", "model=tiny_qwen2", "bitnet.init=gptq", "bitnet.init_calibration_rows=6", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    metrics = read_manifest(out).metrics
    assert metrics["init_calibration_rows"] == 6 and metrics["init_calibration_tokens"] > 0
    assert 0.0 < metrics["init_error_ratio"] < 1.0
    gptq, settings = load_bitnet_checkpoint(out)
    rtn, _ = load_bitnet_checkpoint(converted_qwen2)
    assert settings.init == "gptq"
    changed = [n for (n, a), (_, b) in zip(bitlinear_modules(gptq), bitlinear_modules(rtn)) if not torch.equal(a.weight, b.weight)]
    assert len(changed) == 14


def test_calibration_data_too_small_says_how_to_convert_without_it(tmp_path):
    tiny_text = tmp_path / "two-words.txt"
    tiny_text.write_text("hello world\n")
    proc = wrinklefree("convert", "model=tiny_qwen2", "bitnet.subln_init=calibrated", f"data={tiny_text}", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2, proc.stderr
    assert "bitnet.subln_init=ones" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_model_option_exits_2_with_choices(tmp_path):
    proc = wrinklefree("convert", "model=tiny_lama", f"out={tmp_path / 'x'}")
    assert proc.returncode == 2
    assert "unknown option 'tiny_lama'" in proc.stderr and "tiny_llama" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not lose me")
    proc = wrinklefree("convert", "model=tiny_llama", f"out={precious}")
    assert proc.returncode == 2
    assert "is not a WrinkleFree checkpoint" in proc.stderr
    assert (precious / "notes.txt").read_text() == "do not lose me"


def test_missing_model_folder_is_a_clear_error(tmp_path):
    proc = wrinklefree("convert", "model.source=hf", f"model.path={tmp_path / 'nope'}", "model.package=null", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_unsupported_architecture_lists_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)).save_pretrained(folder)
    proc = wrinklefree("convert", f"model={folder}", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2, proc.stderr
    for name in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert name in proc.stderr
    assert not (tmp_path / "o").exists()


def test_converting_a_checkpoint_again_is_refused(converted_qwen2: Path, tmp_path):
    proc = wrinklefree("convert", f"model={converted_qwen2}", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2
    assert "already a BitNet checkpoint" in proc.stderr


@pytest.mark.parametrize("damage", ["truncated safetensors", "unparsable config.json"])
def test_a_damaged_hf_folder_is_one_clear_error_and_no_output(tmp_path, damage):
    import shutil

    source = tmp_path / "hf"
    shutil.copytree(materialize(compose("convert", ["model=tiny_llama"]).model), source)
    if damage == "truncated safetensors":
        weights = source / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        (source / "config.json").write_text('{"model_type": "llama", ')
    out = tmp_path / "out"
    proc = wrinklefree("convert", f"model={source}", f"out={out}")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot load the HF model in {source}" in errors[0] and "again" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
