"""Supported architectures: one file per HF architecture and per llama.cpp graph (spec.py), and their lookup.

    llama.py   Llama / SmolLM2  -> llama.cpp `llama`
    qwen2.py   Qwen2 / Qwen2.5  -> `qwen2`
    qwen3.py   Qwen3            -> `qwen3`
    bitnet.py  the SubLN graph every bitdistill conversion exports to
    lookup.py  architecture_of (the resolved entry or a refusal), gguf_arch_of, check_rope_for_export

`SUPPORTED_ARCHITECTURES` is the registry itself (model_type -> ArchitectureSpec); the config's
`model.architecture` Literal lists the same names (tests/models/test_architectures.py).
"""

from wrinklefree_core.models.architectures.lookup import (
    UnsupportedArchitectureError,
    architecture_of,
    check_rope_for_export,
    gguf_arch_of,
)
from wrinklefree_core.models.architectures.spec import ArchitectureSpec, GraphSpec, architectures, graph, graphs

SUPPORTED_ARCHITECTURES = architectures()

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "ArchitectureSpec",
    "GraphSpec",
    "UnsupportedArchitectureError",
    "architecture_of",
    "architectures",
    "check_rope_for_export",
    "gguf_arch_of",
    "graph",
    "graphs",
]
