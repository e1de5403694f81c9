"""BitNetSettings: how a model is (or was) converted. Stored under "bitnet" in a checkpoint's config.json.

These settings plus the HF config are everything needed to rebuild the module tree of a converted
checkpoint before its safetensors are loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUBLN_EXPORTABLE = {"none", "bitdistill"}


class BitNetSettings(BaseModel):
    """Conversion settings: which layers become BitLinear, where SubLN goes, the quantization blend."""

    model_config = ConfigDict(extra="forbid")

    subln: Literal["bitdistill", "none", "all"] = Field(
        "bitdistill",
        description="SubLN placement: 'bitdistill' = RMSNorm before o_proj and down_proj (exports to GGUF arch "
        "bitnet); 'none'; 'all' = before every BitLinear (experimental, cannot export to GGUF).",
    )
    subln_eps: float | None = Field(None, description="SubLN epsilon; null takes the model's rms_norm_eps.")
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
