"""The specs every layer reads about an architecture: one file per HF architecture, one per llama.cpp graph.

An `ArchitectureSpec` is what conversion needs to know of a Hugging Face decoder (its causal-LM class,
biases, QK-norm, the llama.cpp graph it exports as without SubLN, whether transformers' stock
`bitnet` model can express it). A `GraphSpec` is what the GGUF writer must respect for one llama.cpp
graph (src/models/<name>.cpp): the biases it loads, its RoPE layout, whether n_embd must be
n_head * head_dim, per-frequency RoPE factors, QK-norm, a tied output head, SubLN. Conversion
(lookup.py), the GGUF layout and padding (export/), the RoPE checks (models/rope.py) and the HF
export read these, so an architecture is its file here plus its test.

Each file of this package (llama.py, qwen2.py, qwen3.py, bitnet.py) registers its specs at import;
`architectures()` / `graphs()` import them all once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from wrinklefree_core.registry import Registry

PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


@dataclass(frozen=True)
class ArchitectureSpec:
    """What conversion and export need to know about one HF decoder architecture.

    Attributes:
        hf_class: the HF causal-LM class name, e.g. "LlamaForCausalLM".
        model_type: `config.model_type`, e.g. "llama".
        gguf_arch: the llama.cpp graph (a GraphSpec name) it exports as without SubLN.
        qkv_bias: q_proj/k_proj/v_proj carry a bias.
        o_bias: o_proj carries a bias.
        mlp_bias: gate/up/down_proj carry a bias.
        qk_norm: per-head RMSNorm on q and k after projection (Qwen3's q_norm/k_norm).
        bias_from_config: config flags that switch biases on ("attention_bias", "mlp_bias"); the
            registry entry holds the defaults and `architecture_of` resolves them per config.
        hf_bitnet: transformers' stock `bitnet` model type computes this graph (export.format=hf).
    """

    hf_class: str
    model_type: str
    gguf_arch: str
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    bias_from_config: tuple[str, ...] = ()
    hf_bitnet: bool = False

    def resolve(self, config: Any) -> "ArchitectureSpec":
        """Return this entry with the config-dependent bias flags filled in."""
        changes: dict[str, bool] = {}
        if "attention_bias" in self.bias_from_config and getattr(config, "attention_bias", False):
            changes.update(qkv_bias=True, o_bias=True)
        if "mlp_bias" in self.bias_from_config and getattr(config, "mlp_bias", False):
            changes.update(mlp_bias=True)
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def biased(self) -> frozenset[str]:
        """The projections that carry a bias (resolved entries)."""
        on = {("q_proj", "k_proj", "v_proj"): self.qkv_bias, ("o_proj",): self.o_bias, ("gate_proj", "up_proj", "down_proj"): self.mlp_bias}
        return frozenset(p for names, flag in on.items() if flag for p in names)


@dataclass(frozen=True)
class GraphSpec:
    """What one llama.cpp graph computes, as the GGUF writer must lay a model out for it.

    Attributes:
        name: llama.cpp's architecture name (general.architecture).
        biases: the projections whose bias tensors the graph loads (create_tensor(..., "bias")).
        rows_permuted: RoPE on interleaved pairs (LLAMA_ROPE_TYPE_NORM): HF's q/k rows are permuted
            per head, which needs an even head_dim.
        width_is_heads: wq/wo are shaped [n_embd, n_embd]: n_head * head_dim must equal hidden_size
            (padding then keeps the two equal).
        freq_factors: multiplies RoPE frequencies by a rope_freqs tensor (llama3 scaling).
        qk_norm: applies per-head attn_q_norm/attn_k_norm.
        tied_head: reuses token_embd as the output head (no output.weight).
        sub_norms: applies attn_sub_norm/ffn_sub_norm in every layer (the SubLN graph).
    """

    name: str
    biases: frozenset[str] = frozenset()
    rows_permuted: bool = False
    width_is_heads: bool = False
    freq_factors: bool = False
    qk_norm: bool = True
    tied_head: bool = False
    sub_norms: bool = False


# Two tables filled by the same files (each registers its HF architecture and/or its llama.cpp graph).
_ARCHITECTURES: Registry[ArchitectureSpec] = Registry(__package__, "architecture", skip=("spec", "lookup"))
_GRAPHS: Registry[GraphSpec] = Registry(__package__, "llama.cpp graph", skip=("spec", "lookup"))


def register(spec: ArchitectureSpec | GraphSpec) -> Any:
    """Add an architecture (by model_type) or a llama.cpp graph (by name); each file here calls it at import."""
    if isinstance(spec, ArchitectureSpec):
        return _ARCHITECTURES.add(spec.model_type, spec)
    return _GRAPHS.add(spec.name, spec)


def architectures() -> dict[str, ArchitectureSpec]:
    """Every supported HF architecture by model_type."""
    return _ARCHITECTURES.entries()


def graphs() -> dict[str, GraphSpec]:
    """Every llama.cpp graph the exporter writes, by name."""
    return _GRAPHS.entries()


def graph(name: str) -> GraphSpec:
    """The llama.cpp graph called `name` (KeyError naming the known ones)."""
    known = graphs()
    if name not in known:
        raise KeyError(f"no llama.cpp graph '{name}' is registered; graphs: {', '.join(known)}")
    return known[name]
