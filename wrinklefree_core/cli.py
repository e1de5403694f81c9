"""`wrinklefree <command> key=value ...`: the one entry point a local run and a cloud job both execute.

Commands:
  convert   HF model -> BitNet checkpoint folder (out=DIR)
  export    checkpoint=DIR format=gguf|hf out=FILE.gguf|DIR (GGUF verified in llama.cpp)
  train     BitNet checkpoint or model (+ teacher) -> trained BitNet checkpoint (out=DIR; training=RECIPE)
  eval      perplexity per data source of checkpoint=DIR (a BitNet checkpoint or an HF folder): a local
            data=FILE|DIR it never trained on is scored whole, other sources on their held-out split (eval.split);
            checkpoint=FILE.gguf: scored in llama.cpp beside llama.cpp's own quantization of the teacher,
            with MiB, bits per weight, tok/s and a one-line verdict (eval.* settings)
  config    print the resolved config of a stage: `wrinklefree config train training=unified ...`
  options   list the options of every config group

Overrides use the config syntax documented in docs/configuration.md (`group=option`, `a.b=value`).
Inputs (`model=`, `checkpoint=`, `teacher=`) and `out=` may be gs://bucket/prefix URIs; with
`gcs.enabled=true gcs.bucket=NAME` and no `out=`, outputs go to that bucket (artifacts/io.py).
Errors exit non-zero with one line that says what is wrong and what to use instead.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

STAGES = ("convert", "train", "eval", "export")


def _cmd_config(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import compose

    if not args.overrides or "=" in args.overrides[0]:
        raise SystemExit("usage: wrinklefree config STAGE [key=value ...]  (STAGE: " + ", ".join(STAGES) + ")")
    stage, overrides = args.overrides[0], args.overrides[1:]
    cfg = compose(stage, overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_options(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import group_options
    from wrinklefree_core.config.run import GROUPS

    for group in GROUPS:
        print(f"{group}: {', '.join(group_options(group))}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import compose
    from wrinklefree_core.stages.convert import run_convert

    cfg = compose("convert", args.overrides)
    print(f"converting model={cfg.model.name} (source={cfg.model.source}, subln={cfg.bitnet.subln}) ...", flush=True)
    result = run_convert(cfg)
    if args.json:
        print(json.dumps({"out": result.location, "metrics": result.metrics}))
    else:
        m = result.metrics
        print(f"wrote BitNet checkpoint: {result.location}")
        print(
            f"  {int(m['bitlinear_modules'])} BitLinear modules, {int(m['ternary_params']):,} ternary + "
            f"{int(m['full_precision_params']):,} full-precision params, "
            f"{m['ternary_zero_fraction']:.1%} ternary zeros, {m['convert_seconds']:.1f} s"
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import compose
    from wrinklefree_core.stages.export import run_export

    cfg = compose("export", args.overrides)
    print(f"exporting {cfg.checkpoint} as {cfg.export.format} ...", flush=True)
    result, summary = run_export(cfg)
    if args.json:
        print(json.dumps({"out": result.location, "metrics": result.metrics}))
    else:
        print(summary)
        print(f"wrote {result.location}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import compose
    from wrinklefree_core.stages.train import run_train

    cfg = compose("train", args.overrides)
    print(
        f"training model={cfg.model.name} with training={cfg.training.name} for {cfg.training.max_steps} steps "
        f"(resume={cfg.training.resume}) ...",
        flush=True,
    )
    result = run_train(cfg)
    if not result.metrics:  # a non-zero rank of a multi-device run: rank 0 reports
        return 0
    if args.json:
        print(json.dumps({"out": result.location, "metrics": result.metrics}))
    else:
        m = result.metrics
        parts = ", ".join(f"{k}={m[k]:.4f}" for k in ("loss", "ce", "dlm", "logits_kd", "attention_kd", "lrc") if k in m)
        print(f"wrote BitNet checkpoint: {result.location}")
        print(
            f"  step {int(m['step'])}: {parts}; held-out perplexity {m['val/ppl']:.2f}; "
            f"{int(m['tokens']):,} tokens in {m['train_seconds']:.1f} s"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import compose
    from wrinklefree_core.artifacts.io import local_inputs
    from wrinklefree_core.evaluation.perplexity import run_eval

    cfg = compose("eval", args.overrides)
    if cfg.checkpoint and cfg.checkpoint.endswith(".gguf"):
        return _eval_gguf(cfg, args.json)
    local_cfg, _ = local_inputs(cfg)
    result = run_eval(local_cfg)
    if cfg.checkpoint:
        result["checkpoint"] = cfg.checkpoint  # the URI asked for, not the local download
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['checkpoint']} ({result['kind']}), sequences of {result['seq_len']} tokens:")
        for name, r in result["sources"].items():
            rows = "all its documents" if r["split"] == "all" else "its held-out split"
            print(f"  {name}: perplexity {r['perplexity']:.3f} (loss {r['loss']:.4f} over {int(r['tokens']):,} tokens, {rows})")
    return 0


def _eval_gguf(cfg, as_json: bool) -> int:
    from pathlib import Path

    from wrinklefree_core.evaluation.compare import compare_gguf
    from wrinklefree_core.evaluation.speed import machine
    from wrinklefree_core.evaluation.value_table import table_rows, text, verdict

    gguf = Path(cfg.checkpoint).expanduser()
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} does not exist: pass checkpoint=FILE.gguf, a file written by `wrinklefree export`")
    evals = compare_gguf(gguf, cfg)
    line = verdict(evals, evals[-1]["label"])
    if as_json:
        print(json.dumps({"evals": evals, "verdict": line, "machine": machine()}))
        return 0
    speed = cfg.eval.speed
    splits = {r["split"] for r in evals[-1]["sources"].values()}
    rows = "held-out rows" if splits == {"heldout"} else "all documents" if splits == {"all"} else "all documents of local sources, held-out rows of the rest"
    print(f"{gguf}: perplexity on {rows}, sequences of {cfg.training.seq_len} tokens (x teacher: over the full-precision teacher's)")
    if speed.enabled:
        print(f"speed: llama.cpp, {speed.threads} thread(s), {speed.prompt_length}-token prompt, {speed.decode_steps} decode steps, "
              f"median of {speed.rounds}, on {machine()}")
    print(text(table_rows(evals)))
    print(line)
    return 0


COMMANDS = {
    "convert": _cmd_convert,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "export": _cmd_export,
    "config": _cmd_config,
    "options": _cmd_options,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrinklefree",
        description="Turn HF language models into ternary BitNet models that llama.cpp runs.",
        epilog="Example: wrinklefree convert model=smollm2_135m out=outputs/smollm2-bitnet",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    parser.add_argument("overrides", nargs="*", help="config overrides: group=option or a.b.c=value")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    from wrinklefree_core.console import quiet_libraries
    from wrinklefree_core.errors import USER_ERRORS

    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
