"""Pipeline parameters: the form the Prefect UI shows, built from the pydantic config sections themselves.

`PipelineParams` is the one parameter of the full-pipeline flow. Each stage is a nested form of
its config sections (flows/stage_params.py: `train.training.optimizer.lr`, `export.export.ternary_type`,
...), defaulting to what the stage's recipe composes to. Prefect renders the JSON schema as a form
and validates a submitted run against it (types, bounds, choices, unknown keys); the model
validator then composes every stage's RunConfig, so what only the whole config can check (the
lrc stage keeping the lrc objective, an unknown key in a raw `overrides` list) fails at parameter
validation too, before anything is computed.

The overrides of a stage are, in order (later wins): `model=<model>`, PIPELINE_DEFAULTS (training
data, held-out domains, no leftover training state), the smoke budget (flows/smoke_budget.py) when
`smoke` is set, `common` (its changed fields, then its `overrides`), the stage's own (same), then
tracking settings. Only fields that differ from the recipe become overrides (flows/sections.py),
so the smoke budget applies to whatever a form leaves at the recipe's value. `eval` is applied to
the configuration that defines the held-out rows (data, training.seq_len, training.batch_size).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.smoke_budget import smoke_budget
from flows.stage_params import CommonParams, ConvertParams, DistillParams, EvalParams, ExportParams, LrcParams, TrainParams
from tasks.stage_plan import DEFAULT_OUT_ROOT, STAGES, compose_stage
from wrinklefree_core.config import compose

# The pipeline trains on one domain and scores two others it never saw (configs/data/heldout_eval.yaml):
# a recipe that only fits its training text cannot look good in the table. Applied right after
# `model=`, so the smoke budget, `common` and each stage's form can still change them.
# A stage's output is content-addressed and never continued, so its resumable state is deleted once
# the output is written (a failed stage keeps it, and its rerun resumes).
PIPELINE_DEFAULTS = {"stages": ["data=python_docs", "training.keep_state=false"], "eval": ["data=heldout_eval"]}

# The typed sub-forms of PipelineParams (every other field is a plain setting).
FORMS = ("common", *STAGES, "eval")


class PipelineParams(BaseModel):
    """What one full-pipeline run does: the model, the budget, and each stage's typed config sections."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2_135m", description="Source model: a configs/model option (tiny_llama, smollm2_135m, ...) or an HF folder.")
    smoke: bool = Field(False, description="Small budget from configs/pipeline/smoke.yaml: seconds on tiny models, ~15 min on SmolLM2-135M.")
    common: CommonParams = Field(CommonParams(), description="Settings of every stage and the evaluation (data, compute, gcs, teacher).")
    convert: ConvertParams = Field(ConvertParams(), description="The convert stage: model settings, BitNet conversion.")
    train: TrainParams = Field(TrainParams(), description="The train stage (training=unified).")
    lrc: LrcParams = Field(LrcParams(), description="The lrc stage (training=lrc_calibration).")
    distill: DistillParams = Field(DistillParams(), description="The distill stage (training=bitdistill_full).")
    export: ExportParams = Field(ExportParams(), description="The export stage (e.g. export.ternary_type=tq1_0).")
    eval: EvalParams = Field(EvalParams(), description="The held-out rows of the eval table (data, row length).")
    eval_max_sequences: int | None = Field(64, gt=0, description="Held-out rows per source scored for the table (null = all).")
    out_root: str = Field(DEFAULT_OUT_ROOT, description="Where stage outputs go (<out_root>/<stage>/<key>); a folder or gs://bucket/prefix.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; null = sqlite store in the WrinkleFree cache folder.")
    experiment: str = Field("wrinklefree", description="MLflow experiment of the pipeline run and its stage runs.")
    refresh: bool = Field(False, description="Recompute every stage even when a cached result matches.")

    def overrides_for(self, stage: str) -> list[str]:
        """The override list of `stage` (a pipeline stage or "eval"), in the order the module docstring gives."""
        items = [f"model={self.model}"]
        items += PIPELINE_DEFAULTS.get(stage, PIPELINE_DEFAULTS["stages"])
        if self.smoke:
            items += smoke_budget(self.model).for_stage(stage)
        items += self.common.items() + getattr(self, stage).items()
        items.append(f"tracking.experiment={self.experiment}")
        if self.tracking_uri:
            items.append(f"tracking.mlflow_uri={self.tracking_uri}")
        return items

    def mlflow_params(self) -> dict[str, str]:
        """The pipeline run's MLflow params: the scalar settings and, per section, the overrides it amounts to.

        Only what differs from the recipes: every stage run logs its full resolved config anyway.
        """
        flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in self.model_dump(mode="json", exclude=set(FORMS)).items()}
        flat.update({f"{name}.changes": " ".join(getattr(self, name).items()) for name in FORMS})
        return flat

    @property
    def eval_rows(self) -> int | None:
        """Rows per source the evaluation scores (the smoke budget caps it)."""
        if self.smoke:
            rows = smoke_budget(self.model).eval_rows
            return min(self.eval_max_sequences or rows, rows)
        return self.eval_max_sequences

    @model_validator(mode="after")
    def _stages_compose(self) -> "PipelineParams":
        # A placeholder upstream lets the checkpoint-reading stages compose; the real one comes at run time.
        for stage in STAGES:
            compose_stage(stage, self.overrides_for(stage), None if stage == "convert" else "upstream")
        compose("eval", self.overrides_for("eval"))
        return self


def smoke_params(**changes) -> PipelineParams:
    """The smoke pipeline on tiny_llama (what the smoke deployment and the nightly run use)."""
    return PipelineParams(**{"model": "tiny_llama", "smoke": True, **changes})
