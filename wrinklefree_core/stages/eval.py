"""The eval command: perplexity of a checkpoint per data source, or a GGUF beside llama.cpp's own quantization.

`checkpoint=DIR` (a BitNet checkpoint or an HF folder): scored in PyTorch. A local `data=FILE|DIR`
that the checkpoint never trained on is scored whole, other sources on their held-out split
(`eval.split`, evaluation/scored_split.py). `checkpoint=FILE.gguf`: scored in llama.cpp beside the
teacher's F16 / Q4_0 / Q2_K made by llama.cpp's quantizer, with MiB, bits per weight, tok/s and a
one-line verdict (evaluation/compare.py). It writes no artifact, so it is a command and not a
pipeline stage; the pipeline's own table is tasks/eval_task.py, on the same functions.
"""

from __future__ import annotations

from pathlib import Path

from wrinklefree_core.artifacts.result import StageResult
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages.base import Section, Stage, register


def run_eval_command(cfg: RunConfig) -> StageResult:
    """Score `cfg.checkpoint` (module docstring); `details` is what `--json` prints."""
    if cfg.checkpoint and cfg.checkpoint.endswith(".gguf"):
        return _eval_gguf(cfg)
    from wrinklefree_core.artifacts.io import local_inputs
    from wrinklefree_core.evaluation.perplexity import run_eval

    local_cfg, _ = local_inputs(cfg)
    result = run_eval(local_cfg)
    if cfg.checkpoint:
        result["checkpoint"] = cfg.checkpoint  # the URI asked for, not the local download
    lines = [f"{result['checkpoint']} ({result['kind']}), sequences of {result['seq_len']} tokens:"]
    for name, r in result["sources"].items():
        rows = "all its documents" if r["split"] == "all" else "its held-out split"
        lines.append(f"  {name}: perplexity {r['perplexity']:.3f} (loss {r['loss']:.4f} over {int(r['tokens']):,} tokens, {rows})")
    metrics = {f"{name}/ppl": float(r["perplexity"]) for name, r in result["sources"].items()}
    return StageResult(out=None, metrics=metrics, summary="\n".join(lines), details=result)


def _eval_gguf(cfg: RunConfig) -> StageResult:
    from wrinklefree_core.evaluation.compare import compare_gguf
    from wrinklefree_core.evaluation.speed import machine
    from wrinklefree_core.evaluation.value_table import table_rows, text, verdict

    gguf = Path(cfg.checkpoint).expanduser()
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} does not exist: pass checkpoint=FILE.gguf, a file written by `wrinklefree export`")
    evals = compare_gguf(gguf, cfg)
    line = verdict(evals, evals[-1]["label"])
    speed = cfg.eval.speed
    splits = {r["split"] for r in evals[-1]["sources"].values()}
    rows = "held-out rows" if splits == {"heldout"} else "all documents" if splits == {"all"} else "all documents of local sources, held-out rows of the rest"
    lines = [f"{gguf}: perplexity on {rows}, sequences of {cfg.training.seq_len} tokens (x teacher: over the full-precision teacher's)"]
    if speed.enabled:
        lines.append(
            f"speed: llama.cpp, {speed.threads} thread(s), {speed.prompt_length}-token prompt, {speed.decode_steps} decode steps, "
            f"median of {speed.rounds}, on {machine()}"
        )
    lines += [text(table_rows(evals)), line]
    metrics = {f"{e['label']}/ppl": float(e["perplexity"]) for e in evals if "perplexity" in e}
    details = {"evals": evals, "verdict": line, "machine": machine()}
    return StageResult(out=None, metrics=metrics, summary="\n".join(lines), details=details)


STAGE = register(
    Stage(
        name="eval",
        summary="perplexity per data source of a checkpoint, or a GGUF beside llama.cpp's quantization of the teacher",
        command="eval",
        run=run_eval_command,
        writes=False,
        logs=("model", "eval", "data", "compute", "gcs", "checkpoint", "seed"),
        sections=(Section("data", "The sources scored."), Section("eval", "Split, baselines and how every GGUF is timed.")),
        usage=(
            "perplexity per data source of checkpoint=DIR (a BitNet checkpoint or an HF folder): a local\n"
            "data=FILE|DIR it never trained on is scored whole, other sources on their held-out split (eval.split);\n"
            "checkpoint=FILE.gguf: scored in llama.cpp beside llama.cpp's own quantization of the teacher,\n"
            "with MiB, bits per weight, tok/s and a one-line verdict (eval.* settings)"
        ),
        as_json=lambda result: result.details,
    )
)
