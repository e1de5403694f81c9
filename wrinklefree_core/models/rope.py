"""Which RoPE variants a model may use, given the llama.cpp graph its GGUF will run in.

    linear:  HF divides every frequency by `factor`      -> GGUF rope.scaling.type=linear, factor
    yarn:    HF ramps between interpolated and original  -> GGUF rope.scaling.type=yarn, factor,
             frequencies and scales cos/sin                 original_context_length, beta_fast/slow,
                                                            yarn_attn_factor
    llama3:  HF divides each frequency by its own factor -> a rope_freqs tensor of those factors
             (depends on wavelength)

Design choices:
- The numbers come from transformers' own RoPE functions (export/gguf_rope.py asks them), so what
  llama.cpp is told is what the PyTorch model computes, and verification in llama.cpp checks it.
- llama.cpp's `bitnet` graph (the SubLN export) applies no per-frequency factors, so llama3 scaling
  can only go to a model exported as plain `llama` (subln=none). That is known at convert, and refused
  there, before any training.
- Other variants (dynamic NTK, longrope, partial rotary, yarn without truncation) have no exact llama.cpp
  counterpart in these graphs and are refused, naming the variant.
"""

from __future__ import annotations

from typing import Any

from wrinklefree_core.models.architectures.spec import graph

CARRIED = ("default", "linear", "yarn", "llama3")


def rope_parameters(config: Any) -> dict[str, Any]:
    """The config's rope_parameters as a plain dict ({} when it has none)."""
    return dict(getattr(config, "rope_parameters", None) or {})


def rope_type(config: Any) -> str:
    return str(rope_parameters(config).get("rope_type", "default"))


def rope_problem(config: Any) -> str | None:
    """Why the config's RoPE cannot be carried to any GGUF, or None when it can."""
    rope = rope_parameters(config)
    kind = rope_type(config)
    if kind not in CARRIED:
        return f"its RoPE scaling ({kind!r}, rope_parameters {rope}) has no llama.cpp counterpart here (carried: {', '.join(CARRIED[1:])})"
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        return f"it rotates only part of each head (partial_rotary_factor {rope['partial_rotary_factor']})"
    if kind == "yarn" and rope.get("truncate") is False:
        return "its YaRN correction range is not truncated (truncate: false), which llama.cpp always does"
    return None


def rope_problem_for_arch(config: Any, gguf_arch: str) -> str | None:
    """Why the config's RoPE cannot run in llama.cpp arch `gguf_arch`, or None."""
    problem = rope_problem(config)
    if problem is None and rope_type(config) == "llama3" and not graph(gguf_arch).freq_factors:
        return (
            f"its llama3 RoPE scaling needs per-frequency factors, which llama.cpp's '{gguf_arch}' graph does not apply; "
            "convert with subln=none to export it as llama.cpp arch 'llama'"
        )
    return problem
