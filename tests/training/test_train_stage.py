"""The training stages end to end on a tiny model and real text: each recipe lowers its own objective,
writes a reloadable BitNet checkpoint with stage.json, and logs one MLflow run.

Every recipe starts from `converted_dir` (the trained tiny teacher converted to BitNet), as the
pipeline does after `wrinklefree convert`; the teacher is found through its stage.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.common import SMALL, first_last_means, history, mlflow_client, run_of
from wrinklefree_core.config import compose
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.models.lrc import lrc_modules
from wrinklefree_core.artifacts.manifest import read_manifest
from wrinklefree_core.training.evaluate import load_for_eval
from wrinklefree_core.stages.train import run_train

STEPS = 30
RECIPES = {
    # Lambda warmup off so the CE curve compares equally quantized models from the first step.
    "unified": ["training.optimizer.lr=3e-3", "training.lambda_warmup.steps=0"],
    "lrc_calibration": ["training.optimizer.lr=3e-3"],
    # Also runs Lightning's validation loop during training (once, at the last step, to stay cheap).
    "bitdistill_full": ["training.optimizer.lr=3e-3", f"training.val_every={STEPS}"],
}


@pytest.fixture(scope="module")
def trained(converted_dir: Path, tmp_path_factory) -> dict[str, tuple[Path, dict[str, float]]]:
    """recipe -> (out folder, stage metrics), each run once for this module."""
    results = {}
    for recipe, extra in RECIPES.items():
        out = tmp_path_factory.mktemp(recipe) / "out"
        overrides = [f"model={converted_dir}", f"training={recipe}", f"training.max_steps={STEPS}", *SMALL, *extra, f"out={out}"]
        result = run_train(compose("train", overrides))
        assert result.out == out
        results[recipe] = (out, result.metrics)
    return results


def values(out: Path, key: str) -> list[float]:
    points = history(out, key)
    return [v for _, v in points]


def test_unified_lowers_ce_and_dlm(trained):
    out, metrics = trained["unified"]
    ce_first, ce_last = first_last_means(values(out, "train/ce"))
    assert ce_last < ce_first - 0.2, (ce_first, ce_last)
    dlm = values(out, "train/dlm")  # DLM joins after the curriculum's CE-only phase (20% of the steps)
    assert len(dlm) < STEPS
    dlm_first, dlm_last = first_last_means(dlm)
    assert dlm_last < dlm_first, (dlm_first, dlm_last)
    assert metrics["step"] == STEPS and metrics["quant_lambda"] == 1.0


def test_unified_recovers_held_out_perplexity(trained, converted_dir):
    """The same held-out rows, scored before (the untrained conversion) and after the stage."""
    from wrinklefree_core.data.datamodule_core import build_datasets
    from wrinklefree_core.training.evaluate import evaluate_perplexity

    out, _ = trained["unified"]
    ppl = {}
    for name, folder in (("before", converted_dir), ("after", out)):
        model, tokenizer, kind = load_for_eval(folder)
        assert kind == "bitnet"
        cfg = compose("train", SMALL)
        _, val = build_datasets(cfg.data, tokenizer, cfg.training.seq_len)
        ppl[name] = evaluate_perplexity(model, val, batch_size=32, eos_token_id=tokenizer.eos_token_id)["shakespeare"]["perplexity"]
    assert ppl["after"] < 0.8 * ppl["before"], ppl


def test_lrc_calibration_trains_only_adapters_and_lowers_hidden_mse(trained):
    out, metrics = trained["lrc_calibration"]
    first, last = first_last_means(values(out, "train/lrc"))
    assert last < 0.9 * first, (first, last)
    assert 0 < metrics["trainable_params"] < 0.5 * metrics["total_params"]
    model, settings = load_bitnet_checkpoint(out)
    assert settings.lrc is not None and settings.lrc.init == "svd"
    assert len(lrc_modules(model)) == 14


def test_distillation_lowers_kl_to_the_teacher(trained):
    out, _ = trained["bitdistill_full"]
    kd_first, kd_last = first_last_means(values(out, "train/logits_kd"))
    assert kd_last < 0.8 * kd_first, (kd_first, kd_last)
    akd_first, akd_last = first_last_means(values(out, "train/attention_kd"))
    assert akd_last < akd_first, (akd_first, akd_last)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_output_reloads_and_carries_stage_json(trained, recipe, teacher_dir, converted_dir):
    out, metrics = trained[recipe]
    model, _ = load_bitnet_checkpoint(out)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    manifest = read_manifest(out)
    assert manifest.stage == {"unified": "train", "lrc_calibration": "lrc", "bitdistill_full": "distill"}[recipe]
    assert manifest.inputs["source_model"] == str(teacher_dir)
    assert manifest.inputs["checkpoint"] == str(converted_dir)
    if recipe != "unified":
        assert manifest.inputs["teacher"] == str(teacher_dir)
    for key in ("loss", "val/ppl", "tokens", "seconds", "step"):
        assert key in manifest.metrics
    assert manifest.metrics["tokens"] == STEPS * 4 * 32
    # The next stage takes the output folder directly.
    chained = compose("train", [f"model={out}", "training=stage2_pretrain"])
    assert chained.model.path == str(out)


def test_one_mlflow_run_with_params_metrics_and_stage_json(trained):
    out, metrics = trained["bitdistill_full"]
    run = run_of(out)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.name"] == "bitdistill_full"
    assert run.data.params["training.optimizer.lr"] == "0.003"
    assert run.data.tags["stage"] == "distill" and run.info.run_name.startswith("4-distill-")
    steps = [s for s, _ in history(out, "train/loss")]
    assert steps == list(range(1, STEPS + 1))
    for key in ("train/logits_kd", "train/attention_kd", "grad/norm", "quant/lambda", "throughput/tokens_per_s", "lr/adamw_decay"):
        assert len(history(out, key)) == STEPS, key
    assert [s for s, _ in history(out, "val/shakespeare/ppl")] == [STEPS]
    assert run.data.metrics["final/val/ppl"] == pytest.approx(metrics["val/ppl"])
    assert dict(history(out, "val/ppl"))[STEPS] == pytest.approx(metrics["val/ppl"], rel=1e-5)
    artifacts = [a.path for a in mlflow_client().list_artifacts(run.info.run_id)]
    assert "stage.json" in artifacts
    local = Path(mlflow_client().download_artifacts(run.info.run_id, "stage.json"))
    assert json.loads(local.read_text())["stage"] == "distill"
