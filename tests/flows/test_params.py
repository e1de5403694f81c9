"""The typed parameter forms: defaults that show what runs, given fields that run, the overrides they become, validation.

Validation is checked at the three places a submitted form meets it: the pydantic models
(PipelineParams, a stage's form), a real flow call (Prefect's parameter validation, before the
flow body runs), and the deployment's parameter schema (what the server checks a UI or CLI run
against, with Prefect's own JSON-schema validator).
"""

from __future__ import annotations

import json
import re

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import ValidationError as SchemaValidationError
from prefect.utilities.schema_tools import validate
from pydantic import ValidationError

from flows.full_pipeline import full_pipeline, main, parse_fields, smoke_pipeline
from flows.params import PipelineParams, SmokePipelineParams, smoke_params
from flows.sections import config_value, context_config, context_items, render
from flows.stage_flows import convert_flow, export_flow, lrc_flow, train_flow
from flows.stage_params import STAGE_PARAMS, CommonParams, EvalParams
from tasks.stage_plan import STAGES, compose_stage
from wrinklefree_core.config import compose
from wrinklefree_core.stages.base import pipeline

TrainParams = STAGE_PARAMS["train"]

# One invalid field of each kind a form can hold, as the nested dict a form submits.
INVALID = {
    "negative lr": {"training": {"optimizer": {"lr": -1e-3}}},
    "unknown optimizer": {"training": {"optimizer": {"type": "sgd"}}},
    "unknown key": {"training": {"optimizr": {"lr": 1e-3}}},
}


def test_form_defaults_are_what_an_untouched_pipeline_runs():
    for stage, form in STAGE_PARAMS.items():
        assert form().items(context_config(stage)) == [], stage
    for stage, recipe in ((s.name, s.recipe) for s in pipeline() if s.recipe):
        composed = compose("train", [f"training={recipe}", *context_items(stage)])
        assert STAGE_PARAMS[stage]().training == composed.training, stage
        assert STAGE_PARAMS[stage]().data == composed.data, stage
        # What the pipeline runs, not the recipe file's own values (shakespeare, keep_state on).
        assert STAGE_PARAMS[stage]().data.config_name == "python_docs" and not STAGE_PARAMS[stage]().training.keep_state
    assert STAGE_PARAMS["export"]().export == compose("export").export
    assert STAGE_PARAMS["convert"]().bitnet == compose("convert").bitnet
    assert EvalParams().data.config_name == "heldout_eval"
    assert CommonParams().items(context_config("train")) == [] and EvalParams().items(context_config("eval")) == []
    # An untouched smoke pipeline composes to its context alone: model, pipeline defaults, budget.
    params = smoke_params()
    for stage in STAGES:
        assert params.form_items(stage) == [], stage
        assert params.overrides_for(stage)[0] == "model=tiny_llama"


def test_a_partial_section_patches_the_context():
    form = TrainParams.model_validate({"training": {"max_steps": 2, "optimizer": {"lr": 1e-5}}})
    assert form.training.lambda_warmup.steps == 20  # unified's, not pydantic's 0
    assert form.training.objectives.dlm.enabled and form.training.curriculum.phases
    assert form.items(context_config("train")) == ["training.max_steps=2", "training.optimizer.lr=1.0e-05"]
    # A model instance contributes the fields it was given.
    from wrinklefree_core.config.training import TrainingConfig

    assert TrainParams(training=TrainingConfig(max_steps=7)).items(context_config("train")) == ["training.max_steps=7"]
    # A partial smoke form keeps the budget for every field it leaves out.
    params = SmokePipelineParams.model_validate({"train": {"training": {"max_steps": 5}}})
    train = compose_stage("train", params.overrides_for("train"), "upstream")
    assert (train.training.max_steps, train.training.seq_len, train.model.name) == (5, 32, "tiny_llama")


def submitted(params: PipelineParams) -> dict:
    """What the Prefect UI submits for a form showing `params`: every field, as JSON."""
    return params.model_dump(mode="json")


def composed(params: PipelineParams) -> dict:
    configs = {s: compose_stage(s, params.overrides_for(s), None if s == "convert" else "upstream") for s in STAGES}
    return {**configs, "eval": compose("eval", params.overrides_for("eval"))}


@pytest.mark.parametrize("form", [PipelineParams, SmokePipelineParams])
def test_a_form_shows_what_runs_and_an_untouched_submit_changes_nothing(form):
    shown = form()
    configs = composed(shown)
    for stage in STAGES:
        for name, path in STAGE_PARAMS[stage].form_fields().items():
            assert getattr(getattr(shown, stage), name) == config_value(configs[stage], path), (stage, name)
    assert shown.eval.seq_len == configs["eval"].training.seq_len and shown.eval.data == configs["eval"].data
    assert shown.eval_max_sequences == shown.eval_rows
    again = form.model_validate(submitted(shown))
    assert [again.form_items(s) for s in (*STAGES, "eval")] == [[]] * 6
    assert [again.overrides_for(s) for s in STAGES] == [shown.overrides_for(s) for s in STAGES]  # same cache keys


def test_every_submitted_value_runs_even_the_recipe_files_own():
    # The values the recipe file has but the smoke pipeline does not run: submitted, they must run.
    form = submitted(SmokePipelineParams())
    recipe = compose("train", ["training=unified"])
    form["train"]["training"]["max_steps"] = recipe.training.max_steps
    form["train"]["training"]["keep_state"] = True
    form["train"]["data"] = recipe.data.model_dump(mode="json")
    form["eval_max_sequences"] = 64
    params = SmokePipelineParams.model_validate(form)
    train = compose_stage("train", params.overrides_for("train"), "upstream")
    assert train.training.max_steps == recipe.training.max_steps != 3
    assert train.training.keep_state and train.data.config_name == recipe.data.config_name == "shakespeare"
    assert train.training.seq_len == 32  # left as shown: the budget's
    assert params.eval_rows == 64
    lrc = compose_stage("lrc", params.overrides_for("lrc"), "upstream")
    assert lrc.training.max_steps == 3 and lrc.data.config_name == "python_docs"  # other stages as shown


def test_raw_overrides_apply_after_every_field():
    params = PipelineParams.model_validate(
        {"common": {"overrides": ["training.grad_clip=0.5"]}, "train": {"training": {"grad_clip": 2.0}, "overrides": ["training.max_steps=9"]}, "lrc": {"training": {"grad_clip": 2.0}}}
    )
    train = compose_stage("train", params.overrides_for("train"), "upstream")
    lrc = compose_stage("lrc", params.overrides_for("lrc"), "upstream")
    assert (train.training.grad_clip, train.training.max_steps, lrc.training.grad_clip) == (0.5, 9, 0.5)
    assert params.train.training.max_steps == 9  # and the form shows it


def test_changed_fields_reach_the_stage_config():
    params = PipelineParams.model_validate(
        {
            "model": "tiny_llama",
            "smoke": True,
            "common": {"overrides": ["data.seed=4"]},
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
    assert params.mlflow_params()["common.changes"] == "data.seed=4"


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
    assert schema["properties"]["training"]["default"] == context_config("train").training.model_dump(mode="json")
    assert schema["properties"]["upstream_uri"]["default"] == ""  # Quick run takes the last pipeline run's
    assert definitions["OptimizerConfig"]["properties"]["type"]["enum"] == ["adamw", "muon", "muonclip"]
    assert definitions["OptimizerConfig"]["properties"]["lr"]["exclusiveMinimum"] == 0
    assert definitions["TrainingConfig"]["additionalProperties"] is False
    assert parameter_schema(lrc_flow).model_dump()["properties"]["training"]["default"]["name"] == "lrc_calibration"
    assert {"bitnet", "compute"} <= set(parameter_schema(convert_flow).model_dump()["properties"])
    assert "smoke" not in schema["properties"] and "model_settings" not in parameter_schema(convert_flow).model_dump()["properties"]
    assert parameter_schema(export_flow).model_dump()["properties"]["export"]["$ref"] == "#/definitions/ExportConfig"

    validate({"upstream_uri": "x", "training": {"max_steps": 2}}, schema, raise_on_error=True)
    for case, value in INVALID.items():
        with pytest.raises(SchemaValidationError):
            validate({"upstream_uri": "x", **value}, schema, raise_on_error=True)
        print(case, "rejected by the schema")

    pipeline = parameter_schema(full_pipeline).model_dump()
    assert pipeline["definitions"]["PipelineParams"]["properties"]["train"]["$ref"] == "#/definitions/TrainParams"
    assert pipeline["definitions"]["TrainParams"]["properties"]["training"]["default"]["name"] == "unified"
    assert "smoke" not in pipeline["definitions"]["PipelineParams"]["properties"]
    assert "smoke" not in pipeline["properties"]["params"]["default"]
    validate({"params": {"model": "tiny_llama"}}, pipeline, raise_on_error=True)
    smoke = parameter_schema(smoke_pipeline).model_dump()
    assert smoke["properties"]["params"]["default"]["train"]["training"]["max_steps"] == 3
    assert smoke["definitions"]["SmokePipelineParams"]["properties"]["train"]["default"]["training"]["seq_len"] == 32
    # The UI's markdown drops anything that looks like an HTML tag from a description.
    for flow_schema in (schema, pipeline, smoke, *(parameter_schema(f).model_dump() for f in (convert_flow, lrc_flow, export_flow))):
        text = json.dumps(flow_schema)
        assert not re.search(r"<[A-Za-z/!]", text), re.findall(r".{30}<[A-Za-z/!].{30}", text)
    for value in INVALID.values():
        with pytest.raises(SchemaValidationError):
            validate({"params": {"model": "tiny_llama", "train": value}}, pipeline, raise_on_error=True)


def test_main_maps_dotted_fields_onto_the_forms(capsys):
    fields = parse_fields(["model=smollm2_135m", "smoke=true", "train.training.max_steps=10", "export.export.ternary_type=tq1_0"])
    params = PipelineParams.model_validate(fields)
    assert (params.model, params.smoke, params.train.training.max_steps) == ("smollm2_135m", True, 10)
    assert params.train.training.lambda_warmup.steps == 2 and params.form_items("export") == ["export.ternary_type=tq1_0"]
    assert params.train.training.seq_len == 128  # the form shows smollm2's smoke budget
    assert main(["train.training.optimizer.lr=-1"]) == 2
    assert "greater than 0" in capsys.readouterr().err
    assert main(["smoke"]) == 2


def test_a_stage_form_without_upstream_takes_the_last_pipeline_runs(tmp_path):
    from flows.stage_flows import upstream_from_pipeline

    with pytest.raises(ValueError, match="give upstream_uri: the `uri` of a convert stage output.*run the pipeline with this out_root first"):
        upstream_from_pipeline("train", str(tmp_path))
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": {"convert": {"uri": "/a/convert"}, "lrc": {"uri": "/a/lrc"}}}))
    assert upstream_from_pipeline("train", str(tmp_path)) == "/a/convert"
    assert upstream_from_pipeline("distill", str(tmp_path)) == "/a/lrc"
    with pytest.raises(ValueError, match="records no distill output"):
        upstream_from_pipeline("export", str(tmp_path))
    with pytest.raises(ValueError, match="keeps no pipeline.json"):
        upstream_from_pipeline("lrc", "gs://bucket/runs")
