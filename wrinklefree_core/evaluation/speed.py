"""Prompt and decode speed of several GGUFs in llama.cpp, timed in one run so that they compare.

One timed run of a file: reset the KV cache, evaluate `prompt_length` in one batch (prompt tok/s),
then `decode_steps` greedy steps of one token each (decode tok/s).

Design choices:
- Every file is loaded once (mmap, its LoRA adapter applied when present), warmed up, then timed in
  `rounds` rounds; the order rotates from round to round, so background load on a shared machine
  hits every file alike. Medians are reported, with min and max of the decode rate.
- Only the last position's logits are computed (no logits_all): that is how a user runs generation,
  and it keeps the output head's cost per prompt what llama.cpp's own tools measure.
- The prompt is random token ids from the file's vocabulary (seeded): speed does not depend on the
  text, and no tokenizer is needed. Greedy argmax, no sampler: EOS never stops a run early.
- The thread count is fixed for every file (SpeedConfig.threads); with 1 thread there are no barriers.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from wrinklefree_core.config.eval import SpeedConfig


def _load(gguf: Path, lora: Path | None, threads: int, n_ctx: int):
    from llama_cpp import Llama

    from wrinklefree_core.export import llamacpp_log

    llamacpp_log.install()
    return Llama(
        model_path=str(gguf), lora_path=None if lora is None else str(lora), n_ctx=n_ctx, n_batch=n_ctx,
        n_ubatch=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False,
    )


def time_once(llm, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(prompt tok/s, decode tok/s) of one run from an empty context, greedy decoding."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(tokens):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return len(prompt) / prompt_s, tokens / (time.perf_counter() - start)


def machine() -> str:
    """The CPU and core count the timings were taken on, for the record beside them."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def measure_speed(files: dict[str, tuple[Path, Path | None]], cfg: SpeedConfig) -> dict[str, dict[str, Any]]:
    """{label: {"prompt_tps", "decode_tps", "decode_min", "decode_max", "threads", "rounds"}} of every
    (GGUF, adapter or None) in `files`, timed together."""
    n_ctx = cfg.prompt_length + cfg.decode_steps + 8
    llms = {label: _load(Path(g), None if a is None else Path(a), cfg.threads, n_ctx) for label, (g, a) in files.items()}
    try:
        vocab = min(llm.n_vocab() for llm in llms.values())
        rng = np.random.default_rng(0)
        prompt = [int(t) for t in rng.integers(min(100, vocab - 1), vocab, size=cfg.prompt_length)]
        for llm in llms.values():
            time_once(llm, prompt[:16], 4)  # warm-up: page the weights in, size the buffers
        names = list(llms)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
        for r in range(cfg.rounds):
            shift = r % len(names)
            for k in names[shift:] + names[:shift]:
                runs[k].append(time_once(llms[k], prompt, cfg.decode_steps))
    finally:
        for llm in llms.values():
            llm.close()
    return {
        k: {
            "prompt_tps": statistics.median(p for p, _ in v),
            "decode_tps": statistics.median(d for _, d in v),
            "decode_min": min(d for _, d in v),
            "decode_max": max(d for _, d in v),
            "threads": cfg.threads,
            "rounds": cfg.rounds,
        }
        for k, v in runs.items()
    }
