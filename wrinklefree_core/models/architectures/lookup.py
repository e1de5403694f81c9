"""Which Hugging Face architectures convert to BitNet: the entry for one config or model, or a refusal that says why.

Design choices:
- An explicit allow-list, not duck typing. Conversion only swaps nn.Linear modules, so many more models
  would "convert" without error, but the GGUF exporter and the tests' reference forward know exactly
  these graphs (pre-norm decoder, RoPE, GQA, SiLU-gated MLP). Anything else is refused up front with a
  message that names what was found and what is supported.
- `architecture_of` returns the registry entry *resolved for one config*: Llama and Qwen3 carry
  optional biases behind config flags, so the entry records the biases the model really has, which
  is what conversion and export need.
- Refused on purpose: MoE (experts are not attention/MLP projections in the same place), sliding-window
  attention (neither llama.cpp's `bitnet` graph nor the reference forward model it), and model classes
  other than `<Arch>ForCausalLM` (conversion needs `model.model.layers` and `lm_head`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wrinklefree_core.models.architectures.spec import ArchitectureSpec, architectures
from wrinklefree_core.models.rope import rope_problem, rope_problem_for_arch

# Config attributes whose presence (with a truthy value) marks a mixture-of-experts model.
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


class UnsupportedArchitectureError(ValueError):
    """The model or config is not one of the architectures conversion and export know."""


def _supported_list() -> str:
    return ", ".join(f"{s.hf_class} (model_type '{s.model_type}')" for s in architectures().values())


def _refuse(found: str, reason: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"Cannot convert {found} to BitNet: {reason}. Supported architectures: {_supported_list()}. "
        "Use one of these (e.g. a SmolLM2, Qwen2.5 or Qwen3 checkpoint), or add a file for it to "
        "wrinklefree_core/models/architectures/ together with conversion and export tests for it."
    )


def architecture_of(config_or_model: Any) -> ArchitectureSpec:
    """Return the resolved registry entry for an HF config or causal-LM model.

    Raises UnsupportedArchitectureError (a ValueError) naming the architecture found, the supported
    ones and what to do, for unknown model types, MoE variants, sliding-window attention, RoPE variants
    llama.cpp has no counterpart for (models/rope.py), or a model object that is not the `<Arch>ForCausalLM` class.
    """
    model = config_or_model if isinstance(config_or_model, nn.Module) else None
    config = getattr(config_or_model, "config", None) if model is not None else config_or_model
    if config is None or not hasattr(config, "model_type"):
        found = type(config_or_model).__name__
        raise _refuse(found, "it has no Hugging Face config with a model_type")

    model_type = config.model_type
    archs = getattr(config, "architectures", None) or []
    found = type(model).__name__ if model is not None else (archs[0] if archs else f"model_type '{model_type}'")
    spec = architectures().get(model_type)
    if spec is None:
        raise _refuse(found, f"model_type '{model_type}' is not supported")

    if model is not None:
        # A subclass of the causal-LM class (e.g. a training wrapper) is fine; LlamaModel or
        # LlamaForSequenceClassification is not: they lack lm_head or the model.model.layers path.
        if spec.hf_class not in {cls.__name__ for cls in type(model).__mro__}:
            raise _refuse(found, f"expected the causal-LM class {spec.hf_class} for model_type '{model_type}'")
    elif archs and spec.hf_class not in archs:
        raise _refuse(found, f"config.architectures is {archs}, expected {spec.hf_class}")

    moe = [f for f in _MOE_FIELDS if getattr(config, f, None)]
    if moe:
        raise _refuse(found, f"it is a mixture-of-experts model ({', '.join(moe)} set)")
    if "sliding_attention" in (getattr(config, "layer_types", None) or []) or getattr(config, "use_sliding_window", False):
        raise _refuse(found, "sliding-window attention is enabled (use_sliding_window / layer_types)")
    problem = rope_problem(config)
    if problem is not None:
        # Refusing here costs nothing; at export it would cost a whole training budget.
        raise _refuse(found, problem)
    return spec.resolve(config)


def gguf_arch_of(config_or_model: Any, subln: str) -> str:
    """The llama.cpp architecture a converted model exports as: `bitnet` with SubLN (bitdistill), else its own."""
    return "bitnet" if subln == "bitdistill" else architecture_of(config_or_model).gguf_arch


def check_rope_for_export(config_or_model: Any, subln: str) -> None:
    """Refuse, before any training, a RoPE variant that the GGUF's llama.cpp graph cannot run."""
    config = getattr(config_or_model, "config", config_or_model)
    problem = rope_problem_for_arch(config, gguf_arch_of(config_or_model, subln))
    if problem is not None:
        archs = getattr(config, "architectures", None) or [config.model_type]
        raise _refuse(archs[0], problem)
