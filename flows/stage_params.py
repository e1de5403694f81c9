"""The typed form of each stage: which config sections a stage's parameters expose, with their defaults.

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
The type aliases are shared with the per-stage flows' signatures (flows/stage_flows.py), so a
stage's flow form and its part of the full-pipeline form are the same fields with the same defaults.
Titles name the stage, so the full-pipeline form reads as one group per stage.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from flows.sections import StageSections, config_value, context_config, section

_COMPUTE = "Where the stage runs (backend, device, precision, SkyPilot resources)."
_DATA = "The stage's training data."

ConvertBitNet = section("convert", "bitnet", "convert · bitnet", "How the model is converted: SubLN placement, target modules, skipped layers.")
ConvertCompute = section("convert", "compute", "convert · compute", _COMPUTE)
TrainTraining = section("train", "training", "train · training", "The unified recipe (configs/training/unified.yaml): CE + DLM with a curriculum.")
TrainData = section("train", "data", "train · data", _DATA)
TrainCompute = section("train", "compute", "train · compute", _COMPUTE)
LrcTraining = section(
    "lrc", "training", "lrc · training", "The LRC recipe (configs/training/lrc_calibration.yaml); must keep the lrc objective."
)
LrcData = section("lrc", "data", "lrc · data", "The calibration data.")
LrcCompute = section("lrc", "compute", "lrc · compute", _COMPUTE)
DistillTraining = section(
    "distill", "training", "distill · training", "The BitDistill recipe (configs/training/bitdistill_full.yaml); must keep a KD objective."
)
DistillData = section("distill", "data", "distill · data", _DATA)
DistillCompute = section("distill", "compute", "distill · compute", _COMPUTE)
ExportSection = section("export", "export", "export · export", "Export format, GGUF types and the llama.cpp verification.")
ExportCompute = section("export", "compute", "export · compute", _COMPUTE)
CommonGCS = section("train", "gcs", "common · gcs", "Google Cloud Storage client settings and bucket (gs:// artifacts, SkyPilot mounts).")
EvalData = section("eval", "data", "eval · data", "Held-out sources of the eval table (their validation split).")
EvalSection = section(
    "eval", "eval", "eval · baselines and speed", "llama.cpp's quantization of the teacher beside the GGUF, and how every GGUF is timed."
)


class ConvertParams(StageSections):
    """convert: HF model -> BitNet checkpoint."""

    bitnet: ConvertBitNet
    compute: ConvertCompute


class TrainParams(StageSections):
    """train: training=unified."""

    training: TrainTraining
    data: TrainData
    compute: TrainCompute


class LrcParams(StageSections):
    """lrc: training=lrc_calibration (only the LRC adapters train)."""

    training: LrcTraining
    data: LrcData
    compute: LrcCompute


class DistillParams(StageSections):
    """distill: training=bitdistill_full."""

    training: DistillTraining
    data: DistillData
    compute: DistillCompute


class ExportParams(StageSections):
    """export: checkpoint -> GGUF (or an HF folder)."""

    export: ExportSection
    compute: ExportCompute


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


STAGE_PARAMS: dict[str, type[StageSections]] = {
    "convert": ConvertParams,
    "train": TrainParams,
    "lrc": LrcParams,
    "distill": DistillParams,
    "export": ExportParams,
}
