"""The typed parameter forms: recipe defaults, patch semantics, overrides they become, and validation.

Validation is checked at the three places a submitted form meets it: the pydantic models
(PipelineParams, a stage's form), a real flow call (Prefect's parameter validation, before the
flow body runs), and the deployment's parameter schema (what the server checks a UI or CLI run
against, with Prefect's own JSON-schema validator).
"""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import ValidationError as SchemaValidationError
from prefect.utilities.schema_tools import validate
from pydantic import ValidationError

from flows.full_pipeline import full_pipeline, main, parse_fields
from flows.params import PipelineParams, smoke_params
from flows.sections import recipe_config, render
from flows.stage_flows import convert_flow, export_flow, lrc_flow, train_flow
from flows.stage_params import STAGE_PARAMS, CommonParams, EvalParams, TrainParams
from tasks.stage_plan import RECIPES, STAGES, compose_stage
from wrinklefree_core.config import compose

# One invalid field of each kind a form can hold, as the nested dict a form submits.
INVALID = {
    "negative lr": {"training": {"optimizer": {"lr": -1e-3}}},
    "unknown optimizer": {"training": {"optimizer": {"type": "sgd"}}},
    "unknown key": {"training": {"optimizr": {"lr": 1e-3}}},
}


def test_form_defaults_are_the_recipes():
    for stage, form in STAGE_PARAMS.items():
        assert form().items() == [], stage
    for stage, recipe in RECIPES.items():
        composed = compose("train", [f"training={recipe}"])
        assert STAGE_PARAMS[stage]().training == composed.training, stage
        assert STAGE_PARAMS[stage]().data == composed.data, stage
    assert STAGE_PARAMS["export"]().export == compose("export").export
    assert STAGE_PARAMS["convert"]().bitnet == compose("convert").bitnet
    assert CommonParams().items() == [] and EvalParams().items() == []
    # An untouched pipeline form composes to exactly what the override lists of old did.
    params = smoke_params()
    for stage in STAGES:
        assert params.overrides_for(stage)[0] == "model=tiny_llama"
        assert not any(item.startswith(("bitnet.", "export.", "compute.")) for item in params.overrides_for(stage)), stage


def test_a_partial_section_patches_the_recipe():
    form = TrainParams.model_validate({"training": {"max_steps": 2, "optimizer": {"lr": 1e-5}}})
    assert form.training.lambda_warmup.steps == 20  # unified's, not pydantic's 0
    assert form.training.objectives.dlm.enabled and form.training.curriculum.phases
    assert form.items() == ["training.max_steps=2", "training.optimizer.lr=1.0e-05"]
    # A model instance contributes the fields it was given.
    from wrinklefree_core.config.training import TrainingConfig

    assert TrainParams(training=TrainingConfig(max_steps=7)).items() == ["training.max_steps=7"]
    # Lists are replaced whole; the overrides escape hatch comes last.
    common = CommonParams.model_validate(
        {"data": {"sources": [{"name": "docs", "path": "package:python_docs"}]}, "overrides": ["seed=3"]}
    )
    assert common.items() == ["data.sources=[{name: docs, path: 'package:python_docs', weight: 1.0}]", "seed=3"]


def test_changed_fields_reach_the_stage_config():
    params = PipelineParams.model_validate(
        {
            "model": "tiny_llama",
            "smoke": True,
            "common": {"data": {"seed": 4}},
            "train": {"training": {"max_steps": 5, "optimizer": {"type": "muon", "lr": 2e-5}}},
            "lrc": {"training": {"lrc": {"rank_fraction": 0.25}}},
            "export": {"export": {"ternary_type": "tq1_0"}},
            "eval": {"seq_len": 48},
        }
    )
    train = compose_stage("train", params.overrides_for("train"), "upstream")
    assert (train.training.max_steps, train.training.optimizer.type, train.training.optimizer.lr) == (5, "muon", 2e-5)
    assert train.training.seq_len == 32 and train.data.seed == 4  # smoke budget and common still apply
    lrc = compose_stage("lrc", params.overrides_for("lrc"), "upstream")
    assert lrc.training.lrc.rank_fraction == 0.25 and lrc.training.max_steps == 3 and lrc.training.lrc.init == "svd"
    assert compose_stage("export", params.overrides_for("export"), "upstream").export.ternary_type == "tq1_0"
    assert compose("eval", params.overrides_for("eval")).training.seq_len == 48
    assert params.mlflow_params()["train.changes"] == "training.max_steps=5 training.optimizer.type=muon training.optimizer.lr=2.0e-05"


@pytest.mark.parametrize("value", [1e-5, 3e-4, "yes", "a=b: c", "line\nbreak", None, [0.9, 0.95], {"ce": 1.0, "dlm": 0.0}, ""])
def test_override_values_read_back_unchanged(value):
    import yaml

    assert yaml.safe_load(render(value)) == value


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_fields_fail_the_pipeline_params(case):
    with pytest.raises(ValidationError):
        PipelineParams.model_validate({"model": "tiny_llama", "train": INVALID[case]})


def test_whole_config_checks_fail_the_pipeline_params():
    with pytest.raises(ValidationError, match="lrc objective"):
        PipelineParams.model_validate({"model": "tiny_llama", "lrc": {"training": {"objectives": {"lrc": {"enabled": False}}}}})
    with pytest.raises(ValidationError, match="did you mean: training.optimizer"):
        PipelineParams.model_validate({"model": "tiny_llama", "train": {"overrides": ["training.optimzer.lr=1e-3"]}})
    with pytest.raises(ValidationError, match="unknown option 'no_such_recipe'"):
        PipelineParams.model_validate({"model": "tiny_llama", "distill": {"overrides": ["training=no_such_recipe"]}})


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_fields_fail_a_flow_call_before_it_runs(harness, case, tmp_path):
    with pytest.raises(ParameterTypeError):
        train_flow(upstream_uri=str(tmp_path / "missing"), out_root=str(tmp_path), **INVALID[case])
    with pytest.raises(ParameterTypeError):
        full_pipeline({"model": "tiny_llama", "smoke": True, "out_root": str(tmp_path), "train": INVALID[case]})
    assert not any(tmp_path.iterdir())  # nothing ran


def test_deployment_schema_shows_and_enforces_typed_fields():
    schema = parameter_schema(train_flow).model_dump()
    definitions = schema["definitions"]
    assert schema["properties"]["training"]["$ref"] == "#/definitions/TrainingConfig"
    assert schema["properties"]["training"]["default"] == recipe_config("train").training.model_dump(mode="json")
    assert definitions["OptimizerConfig"]["properties"]["type"]["enum"] == ["adamw", "muon", "muonclip"]
    assert definitions["OptimizerConfig"]["properties"]["lr"]["exclusiveMinimum"] == 0
    assert definitions["TrainingConfig"]["additionalProperties"] is False
    assert parameter_schema(lrc_flow).model_dump()["properties"]["training"]["default"]["name"] == "lrc_calibration"
    assert {"model_settings", "bitnet", "compute"} <= set(parameter_schema(convert_flow).model_dump()["properties"])
    assert parameter_schema(export_flow).model_dump()["properties"]["export"]["$ref"] == "#/definitions/ExportConfig"

    validate({"upstream_uri": "x", "training": {"max_steps": 2}}, schema, raise_on_error=True)
    for case, value in INVALID.items():
        with pytest.raises(SchemaValidationError):
            validate({"upstream_uri": "x", **value}, schema, raise_on_error=True)
        print(case, "rejected by the schema")

    pipeline = parameter_schema(full_pipeline).model_dump()
    assert pipeline["definitions"]["PipelineParams"]["properties"]["train"]["$ref"] == "#/definitions/TrainParams"
    assert pipeline["definitions"]["TrainParams"]["properties"]["training"]["default"]["name"] == "unified"
    validate({"params": {"model": "tiny_llama", "smoke": True}}, pipeline, raise_on_error=True)
    for value in INVALID.values():
        with pytest.raises(SchemaValidationError):
            validate({"params": {"model": "tiny_llama", "train": value}}, pipeline, raise_on_error=True)


def test_main_maps_dotted_fields_onto_the_forms(capsys):
    fields = parse_fields(["model=smollm2_135m", "smoke=true", "train.training.max_steps=10", "export.export.ternary_type=tq1_0"])
    params = PipelineParams.model_validate(fields)
    assert (params.model, params.smoke, params.train.training.max_steps) == ("smollm2_135m", True, 10)
    assert params.train.training.lambda_warmup.steps == 20 and params.export.items() == ["export.ternary_type=tq1_0"]
    assert main(["train.training.optimizer.lr=-1"]) == 2
    assert "greater than 0" in capsys.readouterr().err
    assert main(["smoke"]) == 2
