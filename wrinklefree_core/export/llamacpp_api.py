"""llama.cpp through llama-cpp-python's `Llama`: open a GGUF (+ LoRA) for scoring, read every position's logits.

Verification's layer check runs llama.cpp through its C API instead (llamacpp_run.py, which reads
hidden states); these are the whole-model paths: the logits check's end-to-end numbers, perplexity
in llama.cpp (evaluation/), and the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def compare_logits(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Errors of `got` vs `want` (both (tokens, vocab)): max abs, median over positions of the per-position
    max abs (robust to the rare position where one activation lands on the other side of a rounding
    boundary), relative L2, and top-1 agreement."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    diff = got64 - want64
    return {
        "max_abs_error": float(np.abs(diff).max()),
        "median_position_max_abs_error": float(np.median(np.abs(diff).max(axis=-1))),
        "rel_l2_error": float(np.linalg.norm(diff) / max(np.linalg.norm(want64), 1e-30)),
        "top1_agreement": float(np.mean(got.argmax(-1) == want.argmax(-1))),
    }


def load_llama(gguf_path: str | Path, n_ctx: int, lora_path: str | Path | None = None):
    """Open a GGUF in llama.cpp the way verification needs it (all logits, F32 KV cache, no flash attention),
    with the LoRA adapter at `lora_path` applied at scale 1 when given."""
    from llama_cpp import Llama

    from wrinklefree_core.export import llamacpp_log

    llamacpp_log.install()
    return Llama(
        model_path=str(gguf_path),
        lora_path=None if lora_path is None else str(lora_path),
        lora_scale=1.0,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=max(1, min(2, os.cpu_count() or 1)),
        logits_all=True,
        type_k=0,
        type_v=0,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def llamacpp_version() -> dict[str, str]:
    """The llama-cpp-python version and the llama.cpp build's system info."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
        "system_info": info.decode() if isinstance(info, bytes) else str(info),
    }


def llamacpp_logits(llm, ids: list[int]) -> np.ndarray:
    """Evaluate `ids` from an empty context and return the logits of every position, (len(ids), vocab)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
