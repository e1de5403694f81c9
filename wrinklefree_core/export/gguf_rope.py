"""RoPE scaling written into the GGUF, from transformers' own RoPE functions (which variants: models/rope.py).

    linear: rope.scaling.type=linear, rope.scaling.factor = f           (llama.cpp: theta * 1/f)
    yarn:   rope.scaling.type=yarn, factor, original_context_length, yarn_beta_fast/slow, and
            yarn_attn_factor = HF attention_factor / (1 + 0.1 ln f), because ggml multiplies the
            attention factor by (1 + 0.1 ln f) itself
    llama3: a `rope_freqs.weight` tensor, F32 [head_dim/2]: HF's default inverse frequencies over its
            llama3 ones (llama.cpp divides each frequency by its factor)

Design choices:
- Every number is read back from what transformers computes for the same config (ROPE_INIT_FUNCTIONS),
  not re-derived from the paper: the GGUF is told what the PyTorch model does, and the verification in
  llama.cpp, which runs the HF RoPE in its reference, checks that the two agree layer by layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from wrinklefree_core.models.rope import rope_parameters, rope_type

ROPE_FREQS_NAME = "rope_freqs.weight"


@dataclass(frozen=True)
class RopeScaling:
    """What llama.cpp needs to compute the model's RoPE; `kind` is HF's rope_type."""

    kind: str
    factor: float = 1.0
    original_context: int | None = None
    yarn_attn_factor: float | None = None
    yarn_beta_fast: float | None = None
    yarn_beta_slow: float | None = None
    freq_factors: tuple[float, ...] | None = None  # llama3: one per frequency, in float32

def _default_inv_freq(config: Any) -> np.ndarray:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = float(rope_parameters(config).get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    return 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def rope_scaling(config: Any) -> RopeScaling:
    """The RoPE scaling of an HF config as llama.cpp takes it (kind "default": nothing to write)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = rope_type(config)
    rope = rope_parameters(config)
    if kind == "default":
        return RopeScaling("default")
    if kind == "linear":
        return RopeScaling("linear", factor=float(rope["factor"]))
    inv_freq, attention = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    rope = rope_parameters(config)  # as transformers standardized it (defaults filled in)
    if kind == "yarn":
        original = int(rope.get("original_max_position_embeddings") or config.max_position_embeddings)
        factor = float(rope.get("factor") or config.max_position_embeddings / original)
        return RopeScaling(
            "yarn",
            factor=factor,
            original_context=original,
            yarn_attn_factor=float(attention) / (1.0 + 0.1 * math.log(factor)),
            yarn_beta_fast=float(rope.get("beta_fast") or 32),
            yarn_beta_slow=float(rope.get("beta_slow") or 1),
        )
    if kind == "llama3":
        factors = _default_inv_freq(config) / inv_freq.double().numpy()
        return RopeScaling("llama3", freq_factors=tuple(factors.astype(np.float32).tolist()))
    raise ValueError(f"RoPE type {kind!r} is not carried to a GGUF (models/rope.py lists what is)")


def add_rope_scaling(writer, scaling: RopeScaling) -> None:
    """Write the GGUF keys of `scaling` (the llama3 tensor is written with the other tensors)."""
    from gguf import RopeScalingType

    if scaling.kind == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling.factor)
    elif scaling.kind == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling.factor)
        writer.add_rope_scaling_orig_ctx_len(scaling.original_context)
        writer.add_rope_scaling_yarn_attn_factor(scaling.yarn_attn_factor)
        writer.add_rope_scaling_yarn_beta_fast(scaling.yarn_beta_fast)
        writer.add_rope_scaling_yarn_beta_slow(scaling.yarn_beta_slow)
