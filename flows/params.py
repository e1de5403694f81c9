"""Pipeline parameters: the form the Prefect UI shows, built from the pydantic config sections themselves.

`PipelineParams` is the one parameter of the full-pipeline flow. Each stage is a nested form of
its config sections (flows/stage_params.py: `train.training.optimizer.lr`, `export.export.ternary_type`,
...). Prefect renders the JSON schema as a form and validates a submitted run against it (types,
bounds, choices, unknown keys); the model validator then composes every stage's RunConfig, so what
only the whole config can check (the lrc stage keeping the lrc objective, an unknown key in a raw
`overrides` list) fails at parameter validation too, before anything is computed. It also makes
every form show what its stage will run: a validated PipelineParams holds, in each field, the value
the composed config has there, and its JSON (the form's defaults, pipeline.json) says so.

A stage's overrides are, in order (later wins): its context (flows/sections.py: `model=<model>`,
PIPELINE_DEFAULTS, and the smoke budget (flows/smoke_budget.py) when `smoke` is set), the given
form fields of `common` and of the stage that differ from that context, `common.overrides`, the
stage's `overrides`, then the tracking settings. So a field a form submits is the value that runs,
and a field not given (Python, the CLI, a partial `--params`) takes the context's.

`smoke` is a preset for Python and the CLI (`smoke=true`), not a form field: a form submits every
field, so a switch there could only contradict the values shown. The `full-pipeline/smoke`
deployment's form is SmokePipelineParams, whose defaults are the smoke budget's values.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from flows.sections import DEFAULT_MODEL, StageSections, context_config, context_items
from flows.smoke_budget import smoke_budget
from flows.stage_params import STAGE_PARAMS, CommonParams, EvalParams
from tasks.stage_plan import DEFAULT_OUT_ROOT, STAGES, compose_stage
from wrinklefree_core.config import RunConfig, compose
from wrinklefree_core.config.redact import redact
from wrinklefree_core.stages import base as stage_registry

# The typed sub-forms of PipelineParams (every other field is a plain setting).
FORMS = ("common", *STAGES, "eval")
# A placeholder input lets the checkpoint-reading stages compose at validation; the real one comes at run time.
UPSTREAM_PLACEHOLDER = "upstream"


class _PipelineForm(BaseModel):
    """PipelineParams' leading fields and its behaviour; the stage forms and the rest follow (below)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        DEFAULT_MODEL,
        description="Source model: a configs/model option (tiny_llama, smollm2_135m, ...) or an HF folder. The fields below keep the values shown when it changes.",
    )
    smoke: SkipJsonSchema[bool] = Field(
        False, exclude=True, description="Fields not given start from the small budget of configs/pipeline/smoke.yaml (Python, CLI)."
    )
    common: CommonParams = Field(CommonParams(), title="common: every stage and the evaluation", description="GCS client settings, teacher, overrides of every stage.")

    def _extra(self, stage: str) -> tuple[str, ...]:
        return tuple(smoke_budget(self.model).for_stage(stage)) if self.smoke else ()

    def context(self, stage: str) -> RunConfig:
        """What `stage` (a pipeline stage or "eval") composes to before any form field: its defaults for this run."""
        return context_config(stage, self.model, self._extra(stage))

    def form_items(self, stage: str) -> list[str]:
        """The overrides the given fields of `common` and of `stage`'s form amount to (raw overrides not included)."""
        context = self.context(stage)
        form: StageSections = getattr(self, stage)
        return self.common.items(context) + form.items(context)

    def overrides_for(self, stage: str) -> list[str]:
        """The override list of `stage` (a pipeline stage or "eval"), in the order the module docstring gives."""
        items = context_items(stage, self.model, self._extra(stage))
        items += self.form_items(stage)
        items += self.common.overrides + getattr(self, stage).overrides
        items.append(f"tracking.experiment={self.experiment}")
        if self.tracking_uri:
            items.append(f"tracking.mlflow_uri={self.tracking_uri}")
        return items

    def mlflow_params(self) -> dict[str, str]:
        """The pipeline run's MLflow params: the scalar settings and, per section, the overrides it amounts to.

        Only what differs from the context: every stage run logs its full resolved config anyway.
        """
        flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in self.model_dump(mode="json", exclude=set(FORMS)).items()}
        flat["smoke"] = json.dumps(self.smoke)
        for name in FORMS:
            form: StageSections = getattr(self, name)
            context = self.context("train" if name == "common" else name)  # common's fields are the same in every stage
            flat[f"{name}.changes"] = " ".join(form.items(context) + form.overrides)
        return flat

    @property
    def eval_rows(self) -> int | None:
        """Rows per source the evaluation scores (a smoke run's budget unless given)."""
        if self.smoke and "eval_max_sequences" not in self.model_fields_set:
            return smoke_budget(self.model).eval_rows
        return self.eval_max_sequences

    @model_validator(mode="after")
    def _compose_and_show(self) -> "_PipelineForm":
        # Composing every stage now refuses a bad run before anything runs; the composed configs
        # then fill each form with what will run (fields given stay marked as given).
        composed = {stage: compose_stage(stage, self.overrides_for(stage), None if stage_registry.get(stage).reads == "model" else UPSTREAM_PLACEHOLDER) for stage in STAGES}
        composed["eval"] = compose("eval", self.overrides_for("eval"))
        shown: dict[str, Any] = {name: getattr(self, name).showing(composed[name]) for name in (*STAGES, "eval")}
        shown["common"] = self.common.showing(composed["train"])
        shown["eval_max_sequences"] = self.eval_rows
        # Plain assignment would mark each field as given; what was given must stay as it was.
        self.__dict__.update(shown)
        return self


class _Trailing(BaseModel):
    """The fields after the stage forms (their definitions; PipelineParams puts them last)."""

    eval: EvalParams = Field(EvalParams(), title="eval: the held-out table", description="The held-out rows every artifact is scored on.")
    eval_max_sequences: int | None = Field(64, gt=0, description="Held-out rows per source scored for the table (null = all).")
    out_root: str = Field(DEFAULT_OUT_ROOT, description="Where stage outputs go (out_root/stage/key); a folder or gs://bucket/prefix.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; null = $WRINKLEFREE_MLFLOW_STORE, else a sqlite store in the WrinkleFree cache folder.")
    experiment: str = Field("wrinklefree", description="MLflow experiment of the pipeline run and its stage runs.")
    refresh: bool = Field(False, description="Recompute every stage even when a cached result matches.")


def _stage_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for number, stage in enumerate(STAGES, 1):
        form = STAGE_PARAMS[stage]
        fields[stage] = (form, Field(form(), title=f"{number} · {stage}", description=f"{stage_registry.get(stage).summary}."))
    return fields


# One field per registered pipeline stage, in pipeline order, between `common` and `eval`.
PipelineParams = create_model(
    "PipelineParams",
    __base__=_PipelineForm,
    __module__=__name__,
    __doc__="What one full-pipeline run does: the model, each stage's typed config sections, where results go.",
    **_stage_fields(),
    **{name: (info.annotation, info) for name, info in _Trailing.model_fields.items()},
)


_SMOKE = PipelineParams(model="tiny_llama", smoke=True, out_root="outputs/smoke")  # the preset, every field as it runs


_NOT_PRESET = ("tracking_uri", "experiment", "refresh")  # the same in both forms


def _smoke_field(name: str) -> Any:
    """A PipelineParams field with the smoke preset's value as its default (same title and description)."""
    field = copy.copy(PipelineParams.model_fields[name])  # keeps its metadata (the smoke switch stays out of the schema)
    field.default = getattr(_SMOKE, name)
    return field


# The smoke preset as a form: tiny_llama with the smoke budget, every field's default the value that runs.
SmokePipelineParams = create_model(
    "SmokePipelineParams",
    __base__=PipelineParams,
    __module__=__name__,
    __doc__="The smoke preset as a form: tiny_llama with the smoke budget, every field's default the value that runs.",
    **{name: (info.annotation, _smoke_field(name)) for name, info in PipelineParams.model_fields.items() if name not in _NOT_PRESET},
)


def smoke_params(**changes) -> PipelineParams:
    """The smoke pipeline on tiny_llama (what the smoke deployment and the nightly run use)."""
    return PipelineParams(**{"model": "tiny_llama", "smoke": True, **changes})


def describe(params: PipelineParams) -> dict[str, Any]:
    """The JSON a run records (pipeline.json): every field as it runs, and the smoke switch."""
    return redact({**params.model_dump(mode="json"), "smoke": params.smoke})
