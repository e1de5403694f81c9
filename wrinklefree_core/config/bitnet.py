"""BitNetSettings: how a model is (or was) converted. Stored under "bitnet" in a checkpoint's config.json.

These settings plus the HF config are everything needed to rebuild the module tree of a converted
checkpoint before its safetensors are loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUBLN_EXPORTABLE = {"none", "bitdistill"}


class LRCSettings(BaseModel):
    """Low-rank correction adapters on every BitLinear (see models/lrc.py)."""

    model_config = ConfigDict(extra="forbid")

    rank_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="Adapter rank = ceil(rank_fraction * min(in, out)) for each BitLinear."
    )
    init: Literal["zeros", "svd"] = Field(
        "zeros",
        description="How the adapters were initialised before calibration (provenance: rebuilding a checkpoint "
        "creates U = 0 adapters that the stored tensors then overwrite).",
    )


class BitNetSettings(BaseModel):
    """Conversion settings: which layers become BitLinear, where SubLN goes, the quantization blend."""

    model_config = ConfigDict(extra="forbid")

    subln: Literal["bitdistill", "none", "all"] = Field(
        "bitdistill",
        description="SubLN placement: 'bitdistill' = RMSNorm before o_proj and down_proj (exports to GGUF arch "
        "bitnet); 'none'; 'all' = before every BitLinear (experimental, cannot export to GGUF).",
    )
    subln_eps: float | None = Field(None, description="SubLN epsilon; null takes the model's rms_norm_eps.")
    subln_init: Literal["ones", "calibrated"] = Field(
        "ones",
        description="SubLN gains at conversion: 'ones' = BitNet's init; 'calibrated' = per-channel least squares to the "
        "full-precision model's own activations on subln_calibration_rows rows of the run's data (models/subln_calibration.py).",
    )
    subln_calibration_rows: int = Field(
        16, gt=0, description="Training rows (training.seq_len tokens each) whose activations fit calibrated SubLN gains."
    )
    init: Literal["rtn", "gptq"] = Field(
        "rtn",
        description="Ternary start: 'rtn' = each weight rounded on its own; 'gptq' = columns in turn, each one's rounding error "
        "pushed onto the rest through the inverse Hessian of the layer's inputs on init_calibration_rows rows (models/gptq_init.py).",
    )
    init_calibration_rows: int = Field(32, gt=0, description="Training rows (training.seq_len tokens each) whose inputs give init=gptq its Hessians.")
    init_damping: float = Field(0.01, gt=0, description="init=gptq: damping added to the Hessian's diagonal, as a fraction of its mean.")
    quant_lambda: float = Field(
        1.0, ge=0.0, le=1.0, description="Quantization blend: 0 = full precision, 1 = ternary weights + int8 activations."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the attention/MLP nn.Linear modules (last path component) converted to BitLinear.",
    )
    skip_layers: list[int] = Field(
        default_factory=list, description="Decoder layer indices left in full precision (e.g. [0] keeps the first layer)."
    )
    lrc: LRCSettings | None = Field(
        None, description="Low-rank correction adapters on every BitLinear; null = none (the lrc stage records them)."
    )
