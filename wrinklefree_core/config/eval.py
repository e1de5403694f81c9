"""The `eval` section: what a GGUF is scored against (llama.cpp's own quantization of the teacher) and how it is timed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wrinklefree_core.config.base import Section

# llama.cpp quantizer types a baseline may use (evaluation/ptq.py maps them to LLAMA_FTYPE_MOSTLY_*).
BaselineType = Literal["f16", "q8_0", "q6_k", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]


class SpeedConfig(Section):
    """How every GGUF of a comparison is timed in llama.cpp, all in one run."""

    enabled: bool = Field(True, description="Time every GGUF (prompt and decode tok/s); false leaves the speed columns empty.")
    threads: int = Field(1, gt=0, description="CPU threads llama.cpp runs on while timing (the same for every file).")
    prompt_length: int = Field(128, gt=0, description="Tokens of the prompt evaluated in one batch (prompt tok/s).")
    decode_steps: int = Field(64, gt=0, description="Greedy decode steps, one token each, after the prompt (decode tok/s).")
    rounds: int = Field(3, gt=0, description="Timed runs per file, in rotating order; the median is reported.")


class EvalConfig(Section):
    """Held-out scoring of an artifact and, for a GGUF, the baselines and timings beside it."""

    split: Literal["auto", "heldout", "all"] = Field(
        "auto",
        description="Rows `wrinklefree eval` scores: auto = all of a local file/folder the model never trained on, else the held-out split.",
    )
    max_sequences: int | None = Field(None, gt=0, description="Held-out rows per source scored (null = all; the pipeline sets its own).")
    baselines: list[BaselineType] = Field(
        default_factory=lambda: ["f16", "q4_0", "q2_k"],
        description="llama.cpp quantizations of the teacher (llama_model_quantize) scored and timed beside a GGUF; [] = none.",
    )
    speed: SpeedConfig = Field(default_factory=SpeedConfig, description="How the GGUFs of a comparison are timed in llama.cpp.")
