"""Pipeline parameters: the form the Prefect UI shows, validated by the same pydantic config models.

`PipelineParams` is the one parameter of the full-pipeline flow. Prefect renders its JSON schema as
a form and validates a submitted run against it; the model validator then composes every stage's
RunConfig, so a typo in any override list (`training.optimzer.lr=...`) fails the run at parameter
validation with compose's "did you mean" message, before anything is computed.

The overrides of a stage are, in order (later wins): `model=<model>`, the smoke budget when
`smoke` is set, `common`, the stage's own list, then tracking settings. `eval` lists are applied to
the configuration that defines the held-out rows (data, training.seq_len, training.batch_size).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.stage_plan import DEFAULT_OUT_ROOT, STAGES, compose_stage
from wrinklefree_core.config import compose

# A few optimizer steps of every recipe on short rows: exercises every code path in seconds.
SMOKE_COMMON = ["training.seq_len=32", "training.batch_size=4", "data.val_fraction=0.01", "training.val_every=100000"]
SMOKE_STAGE = {
    "train": ["training.max_steps=3"],
    "lrc": ["training.max_steps=3"],
    "distill": ["training.max_steps=3"],
}
SMOKE_EVAL_ROWS = 8


class PipelineParams(BaseModel):
    """What one full-pipeline run does; every list takes `wrinklefree` overrides (`a.b=value`, `group=option`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2_135m", description="Source model: a configs/model option (tiny_llama, smollm2_135m, ...) or an HF folder.")
    smoke: bool = Field(False, description="Tiny budget: 3 steps per training stage, 32-token rows, few eval rows.")
    common: list[str] = Field(default_factory=list, description="Overrides applied to every stage (e.g. data=python_docs).")
    convert: list[str] = Field(default_factory=list, description="Overrides of the convert stage (e.g. bitnet.subln=none).")
    train: list[str] = Field(default_factory=list, description="Overrides of the train stage (training=unified).")
    lrc: list[str] = Field(default_factory=list, description="Overrides of the lrc stage (training=lrc_calibration).")
    distill: list[str] = Field(default_factory=list, description="Overrides of the distill stage (training=bitdistill_full).")
    export: list[str] = Field(default_factory=list, description="Overrides of the export stage (e.g. export.ternary_type=tq1_0).")
    eval: list[str] = Field(default_factory=list, description="Overrides of the held-out evaluation (data, training.seq_len).")
    eval_max_sequences: int | None = Field(64, gt=0, description="Held-out rows per source scored for the table (null = all).")
    out_root: str = Field(DEFAULT_OUT_ROOT, description="Where stage outputs go (<out_root>/<stage>/<key>); a folder or gs://bucket/prefix.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; null = sqlite store in the WrinkleFree cache folder.")
    experiment: str = Field("wrinklefree", description="MLflow experiment of the pipeline run and its stage runs.")
    refresh: bool = Field(False, description="Recompute every stage even when a cached result matches.")

    def overrides_for(self, stage: str) -> list[str]:
        """The override list of `stage` (a pipeline stage or "eval"), in the order the module docstring gives."""
        items = [f"model={self.model}"]
        if self.smoke:
            items += SMOKE_COMMON + SMOKE_STAGE.get(stage, [])
        items += self.common + list(getattr(self, stage))
        items.append(f"tracking.experiment={self.experiment}")
        if self.tracking_uri:
            items.append(f"tracking.mlflow_uri={self.tracking_uri}")
        return items

    @property
    def eval_rows(self) -> int | None:
        """Rows per source the evaluation scores (the smoke budget caps it)."""
        if self.smoke:
            return min(self.eval_max_sequences or SMOKE_EVAL_ROWS, SMOKE_EVAL_ROWS)
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
