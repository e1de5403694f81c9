"""The smoke budget is chosen per model from configs/pipeline/smoke.yaml and lands in the stage overrides."""

import pytest
import yaml

from flows.params import PipelineParams
from flows.smoke_budget import SmokeBudget, smoke_budget
from tasks.stage_plan import compose_stage
from wrinklefree_core.config import compose
from wrinklefree_core.config.compose import config_root


def test_tiny_models_get_the_default_budget_and_smollm2_its_own():
    raw = yaml.safe_load((config_root() / "pipeline" / "smoke.yaml").read_text())
    assert smoke_budget("tiny_llama") == SmokeBudget.model_validate(raw["default"])
    assert smoke_budget("/some/hf/folder") == smoke_budget("tiny_llama")
    assert smoke_budget("smollm2_135m") == SmokeBudget.model_validate(raw["smollm2_135m"])


def test_budget_reaches_each_stage_and_the_evaluation():
    params = PipelineParams(model="smollm2_135m", smoke=True)
    budget = smoke_budget("smollm2_135m")
    distill = compose_stage("distill", params.overrides_for("distill"), "upstream")
    assert distill.training.max_steps == int(next(o for o in budget.distill if "max_steps" in o).split("=")[1])
    evaluation = compose("eval", params.overrides_for("eval"))
    assert evaluation.training.seq_len == distill.training.seq_len == 128
    # The pipeline trains on python_docs and scores two domains it never trains on.
    assert [s.name for s in distill.data.sources] == ["python_docs"]
    assert [s.name for s in evaluation.data.sources] == ["shakespeare", "licenses"]
    assert evaluation.data.val_fraction == 0.5
    assert params.eval_rows == budget.eval_rows


def test_without_smoke_the_recipe_budget_applies():
    params = PipelineParams(model="smollm2_135m")
    distill = compose_stage("distill", params.overrides_for("distill"), "upstream")
    assert distill.training.max_steps == compose("train", ["training=bitdistill_full"]).training.max_steps


def test_a_budget_with_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match="trian"):
        SmokeBudget.model_validate({"trian": ["training.max_steps=3"]})


def test_each_list_reaches_only_its_stage():
    budget = SmokeBudget(common=["seed=1"], distill=["training.max_steps=2"], export=["export.lora_type=f16"])
    assert budget.for_stage("export") == ["seed=1", "export.lora_type=f16"]
    assert budget.for_stage("distill") == ["seed=1", "training.max_steps=2"]
    assert budget.for_stage("convert") == budget.for_stage("eval") == ["seed=1"]
