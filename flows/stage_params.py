"""The typed form of each stage: which config sections a stage's parameters expose, with recipe defaults.

    convert   model_settings (the `model` section), bitnet, compute
    train     training (training=unified), data, compute
    lrc       training (training=lrc_calibration), data, compute
    distill   training (training=bitdistill_full), data, compute
    export    export, compute
    common    data, compute, gcs, teacher: applied to every stage and the evaluation
    eval      data, seq_len, batch_size: the held-out rows of the eval table

Every class adds `overrides` (raw `wrinklefree` overrides, applied last) for what a form cannot
say, such as choosing another group option (`training=stage2_pretrain`, `compute=skypilot_h100`).
The type aliases are shared with the per-stage flows' signatures (flows/stage_flows.py), so a
stage's flow form and its part of the full-pipeline form are the same fields with the same defaults.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from flows.sections import StageSections, recipe_value, section

_COMPUTE = "Where the stage runs (backend, device, SkyPilot resources); fields changed here apply on top of `common`."
_DATA = "Training data of this stage; fields changed here apply on top of `common`."

ConvertModel = section(
    "convert", "model", "The source model's settings; only fields changed here apply, on top of the model that `model` chooses."
)
ConvertBitNet = section("convert", "bitnet", "How the model is converted: SubLN placement, target modules, skipped layers.")
ConvertCompute = section("convert", "compute", _COMPUTE)
TrainTraining = section("train", "training", "The unified recipe (configs/training/unified.yaml): CE + DLM with a curriculum.")
TrainData = section("train", "data", _DATA)
TrainCompute = section("train", "compute", _COMPUTE)
LrcTraining = section("lrc", "training", "The LRC recipe (configs/training/lrc_calibration.yaml); must keep the lrc objective.")
LrcData = section("lrc", "data", _DATA)
LrcCompute = section("lrc", "compute", _COMPUTE)
DistillTraining = section(
    "distill", "training", "The BitDistill recipe (configs/training/bitdistill_full.yaml); must keep a KD objective."
)
DistillData = section("distill", "data", _DATA)
DistillCompute = section("distill", "compute", _COMPUTE)
ExportSection = section("export", "export", "Export format, GGUF types and the llama.cpp verification.")
ExportCompute = section("export", "compute", _COMPUTE)
CommonData = section("train", "data", "Data of every stage and of the held-out evaluation.")
CommonCompute = section("train", "compute", "Where every stage runs.")
CommonGCS = section("train", "gcs", "Google Cloud Storage client settings and bucket (gs:// artifacts, SkyPilot mounts).")
EvalData = section("eval", "data", "Held-out sources of the eval table (their validation split); changes apply on top of `common`.")


class ConvertParams(StageSections):
    """convert: HF model -> BitNet checkpoint."""

    PATHS: ClassVar[dict[str, str]] = {"model_settings": "model"}
    model_settings: ConvertModel
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
    """Settings of every stage (and of the evaluation); a stage's own fields apply after these."""

    data: CommonData
    compute: CommonCompute
    gcs: CommonGCS
    teacher: str | None = Field(
        None, description="Full-precision teacher of lrc/distill (HF folder, checkpoint or model config name); null = the source model."
    )


_EVAL_TRAINING = recipe_value("eval", "training")  # where the seq_len / batch_size defaults come from


class EvalParams(StageSections):
    """The held-out rows every artifact is scored on."""

    PATHS: ClassVar[dict[str, str]] = {"seq_len": "training.seq_len", "batch_size": "training.batch_size"}
    data: EvalData
    seq_len: int = Field(_EVAL_TRAINING.seq_len, gt=0, description="Tokens per held-out row.")
    batch_size: int = Field(_EVAL_TRAINING.batch_size, gt=0, description="Rows per forward pass.")


STAGE_PARAMS: dict[str, type[StageSections]] = {
    "convert": ConvertParams,
    "train": TrainParams,
    "lrc": LrcParams,
    "distill": DistillParams,
    "export": ExportParams,
}
