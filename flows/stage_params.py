"""The typed form of each stage: which config sections a stage's parameters expose, with their defaults.

Each pipeline stage's form is generated from its registry entry (wrinklefree_core/stages/: the
`sections` it shows, with their descriptions), so a new stage brings its form with it:

    convert   bitnet, compute (the model itself is the pipeline's `model`)
    train     training (training=unified), data, compute
    lrc       training (training=lrc_calibration), data, compute
    distill   training (training=bitdistill_full), data, compute
    export    export, compute
    common    gcs, teacher: the settings every stage and the evaluation share
    eval      data, seq_len, batch_size: the held-out rows of the eval table; eval: baselines and speed

Each config field appears in one form only, so a form that submits every field (the Prefect UI)
never has two values for one setting. Every class adds `overrides` (raw `wrinklefree` overrides,
applied after every form field) for what a form cannot say, such as choosing another group option
(`training=stage2_pretrain`, `compute=skypilot_h100`) or a model setting (`model.dtype=bfloat16`).
The section types are shared with the per-stage flows' signatures (flows/stage_flows.py), so a
stage's flow form and its part of the full-pipeline form are the same fields with the same defaults.
Titles name the stage, so the full-pipeline form reads as one group per stage.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, create_model

from flows.sections import StageSections, config_value, context_config, section
from tasks.stage_plan import STAGES
from wrinklefree_core.stages import base as stage_registry


def section_types(stage: str) -> dict[str, Any]:
    """{section name: its annotated form type} of a pipeline stage, in the registry's order."""
    return {s.name: section(stage, s.name, f"{stage} · {s.name}", s.description) for s in stage_registry.get(stage).sections}


def _stage_params(stage: str) -> type[StageSections]:
    spec = stage_registry.get(stage)
    model = create_model(f"{stage.capitalize()}Params", __base__=StageSections, __module__=__name__, **section_types(stage))
    model.__doc__ = f"{stage}: {spec.summary}."
    return model


STAGE_PARAMS: dict[str, type[StageSections]] = {stage: _stage_params(stage) for stage in STAGES}

CommonGCS = section("train", "gcs", "common · gcs", "Google Cloud Storage client settings and bucket (gs:// artifacts, SkyPilot mounts).")
EvalData = section("eval", "data", "eval · data", "Held-out sources of the eval table (their validation split).")
EvalSection = section(
    "eval", "eval", "eval · baselines and speed", "llama.cpp's quantization of the teacher beside the GGUF, and how every GGUF is timed."
)


class CommonParams(StageSections):
    """Settings of every stage and of the evaluation; `overrides` here apply before each stage's own."""

    PATHS: ClassVar[dict[str, str]] = {"teacher": "teacher"}
    gcs: CommonGCS
    teacher: str | None = Field(
        None, description="Full-precision teacher of lrc/distill (HF folder, checkpoint or model config name); null = the source model."
    )


_EVAL = context_config("eval")  # where the seq_len / batch_size defaults come from


class EvalParams(StageSections):
    """The held-out rows every artifact is scored on."""

    PATHS: ClassVar[dict[str, str]] = {"seq_len": "training.seq_len", "batch_size": "training.batch_size"}
    data: EvalData
    eval: EvalSection
    seq_len: int = Field(config_value(_EVAL, "training.seq_len"), gt=0, title="eval · seq_len", description="Tokens per held-out row.")
    batch_size: int = Field(config_value(_EVAL, "training.batch_size"), gt=0, title="eval · batch_size", description="Rows per forward pass.")
