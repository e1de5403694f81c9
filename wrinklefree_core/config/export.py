"""The `export` section: GGUF for llama.cpp, or an HF folder that stock transformers loads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wrinklefree_core.config.base import Section


class ExportConfig(Section):
    """How a checkpoint is written out and verified."""

    format: Literal["gguf", "hf"] = Field("gguf", description="gguf = llama.cpp file; hf = stock-transformers BitNet folder.")
    ternary_type: Literal["tq2_0", "tq1_0"] = Field(
        "tq2_0", description="GGUF type of ternary matrices whose input width is a multiple of 256."
    )
    pad: bool = Field(
        True,
        description="Zero-pad hidden size, heads and FFN width to multiples of 256 so every ternary matrix is TQ; the padded file computes the same function.",
    )
    fallback_type: Literal["q4_0", "q8_0"] = Field(
        "q4_0", description="Lossless GGUF type for ternary matrices whose input width is not a multiple of 256 (pad=false)."
    )
    float_type: Literal["q4_k", "q5_k", "q6_k", "q8_0", "f16", "f32"] = Field(
        "q6_k",
        description="GGUF type of the embedding, the untied output and unconverted matrices (q4_k 4.5, q6_k 6.56, q8_0 8.5 bits; a row too short for the blocks takes q8_0, then F16).",
    )
    lora_type: Literal["f32", "f16", "q8_0", "q5_0", "q4_0"] = Field(
        "q8_0",
        description="GGUF type of the LRC adapter (NAME.lora.gguf): f16 halves it, q8_0 (8.5 bits) quarters it; both round its input likewise.",
    )
    verify: bool = Field(True, description="Run the exported file in llama.cpp and compare logits with PyTorch.")
    verify_prompt: str = Field(
        "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question:  1,  22,   333.",
        description="Text whose tokens and logits are compared (space runs before digits catch pre-tokenizer mismatches).",
    )
    verify_max_rel_error: float = Field(
        1e-3,
        gt=0,
        description="Allowed relative L2 error of each layer's update and of the logits in llama.cpp vs the modelled reference, above its noise floor.",
    )
    verify_min_top1: float = Field(0.95, ge=0, le=1, description="Smallest allowed fraction of positions whose top-1 token agrees.")
    verify_threads: int = Field(0, ge=0, description="Threads llama.cpp verifies with; 0 = min(2, CPU count).")
    verify_repack: bool = Field(True, description="Let llama.cpp repack weights for its CPU kernels while verifying, as it does by default.")
    hf_packed: bool = Field(False, description="format=hf: store ternary weights packed 2-bit (offline) instead of latent fp weights.")
