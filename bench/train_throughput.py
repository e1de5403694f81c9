"""Training throughput: a BitNet llama (BitLinear + SubLN) vs the same llama with nn.Linear, one run.

Target: a BitNet training step takes <= 1.2x the time of the same model's step with nn.Linear
(same shapes, batch and sequence length), i.e. BitNet trains at >= 1/1.2 of the plain tokens/s.

Run:
    .venv/bin/python bench/train_throughput.py                     # defaults, 1-3 min on 2 CPU cores
    .venv/bin/python bench/train_throughput.py --threads 1         # one core: steadier on a shared CPU
    .venv/bin/python bench/train_throughput.py --threads 1 --ablate --profile 12   # where the time goes
    .venv/bin/python bench/train_throughput.py --no-compile --no-stages --rounds 3 --steps 2
    .venv/bin/python bench/train_throughput.py --model smollm2_135m --batch 2 --seq 256

The first run compiles each model for 30-50 s on 2 cores; inductor caches the generated code on disk,
so later runs with the same shapes compile in seconds. Either way compiling is not timed.

Design choices:
- The model is a random llama built through the project's own `random` source (an 8192-token BPE
  trained on the package corpus, seeded init). The default shape is SmolLM2-135M's layer (hidden 576,
  ffn 1536, 9 heads / 3 KV heads, head dim 64, tied embedding) at 8 layers instead of 30 and with the
  smaller vocabulary, so a default run stays within a few minutes on 2 cores. `--model NAME` takes
  any option of configs/model instead (e.g. `smollm2_135m`, the real one, vocab 49152), and
  --layers/--hidden/... change the random shape. The vocabulary matters for the ratio: the
  embedding, the output head and the cross entropy cost the same in both models, so a large
  vocabulary dilutes the BitNet overhead. The parameter split is printed.
- The two models hold the same weights: the plain model is the loaded HF model (nn.Linear), the
  BitNet model a deep copy of it converted with `convert_to_bitnet` (SubLN 'bitdistill' before o_proj
  and down_proj, quant_lambda 1: the steady state after lambda warmup). `--ablate` adds a third
  model converted with SubLN 'none', so that BitNet - ablation is SubLN's cost and ablation - plain
  the quantization's.
- One step is what the train module's CE-only step does for one micro-batch, without Lightning:
  forward, next-token CE (`objectives.ce.cross_entropy_loss`), backward, AdamW step (`build_optimizer`
  with the default OptimizerConfig: decay/no-decay groups, same hyper-parameters), zero grads.
  Left out, and the same for both models: ZClip's gradient norm, the LR scheduler and the lambda
  warmup write, the logging. The forward passes use_cache=False: a training step never reads a KV
  cache, so filling one would be an extra cost unrelated to either model.
- Precision as the runner picks it: fp32 on CPU; on CUDA fp32 weights under bf16 autocast (what
  Lightning's bf16-mixed does) and SDPA attention (the runner switches to it on GPU). On CPU
  attention is the loaders' eager implementation, as in CPU training. Eager BitLinear on CUDA uses
  the fused Triton quantization kernels; under torch.compile (and on CPU) it is the torch reference.
- Timing: every model first runs --warmup untimed steps (the first allocates AdamW's state; in
  compiled mode the first step also compiles the forward and backward graphs: that compile time is
  printed and excluded). Then, in each of --rounds rounds, every model runs --steps steps in a row,
  and the order of the models rotates from round to round, so load from other processes on a shared
  machine hits all of them alike. Reported numbers are medians over all timed steps; `vs plain` is
  the ratio of the median step times, measured in this one run. Each step is also split into
  forward (with the loss), backward and optimizer time, to show where the difference goes.
- Stages mode runs the BitNet models the way the training stages run them: each decoder block's
  forward compiled (`training/compile.py`, compute.compile) and BitLinear's product as an int8
  matmul (`quant/int_matmul.py`, compute.int_matmul; lambda is 1 here). Its plain row is the
  whole-model compiled plain step, so `vs plain` is the issue's ratio "the BitNet step as the stages
  run it / the plain compiled step".
- Compiled mode compiles the model (`torch.compile(model)`, default inductor, no CUDA graphs); the
  loss and the optimizer step stay eager, the same for both models. It wraps the same models and
  optimizers as eager mode, so training simply continues. quant_lambda is a tensor, so it never
  forces a recompile.
- Tokens per step matter too: the weight quantization (|W| mean, round, blend over every ternary
  matrix) costs the same whatever the batch, while the matmuls grow with it, so that part of the
  overhead weighs less the more tokens a step holds. The default 4 x 256 tokens is small for
  training; --batch/--seq show the trend.
- `--profile N` lists, per model, the ops whose profiled self time differs most from the plain
  model's (aten ops in eager mode; in compiled mode also inductor's generated kernels, named by the
  ops they fuse). Profiling adds overhead, so its totals are not the timed numbers; the ablation is
  the cleaner split between SubLN and quantization.
- On a small shared CPU, OpenMP threads stall whenever another process takes a core, and BitNet's
  extra elementwise kernels add parallel regions that nn.Linear's matmuls do not have; `--threads 1`
  gives steadier ratios there. The 1-minute load average is printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Variant:
    """One model under test, with its optimizer and the per-step phase times collected so far."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    run: nn.Module | None = None  # what is called: the model itself, or its torch.compile wrapper
    times: dict[str, list[float]] = field(default_factory=lambda: {"fwd": [], "bwd": [], "opt": [], "step": []})
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- build


def build_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The full-precision HF model (fp32, nn.Linear) and a one-line description of where it came from."""
    import yaml

    from wrinklefree_core.config.compose import config_root, group_options
    from wrinklefree_core.config.model import ModelConfig, RandomInitConfig
    from wrinklefree_core.models.sources import load_hf_model, materialize

    if args.model == "random":
        hidden = args.hidden
        heads = args.heads or max(1, hidden // 64)
        kv_heads = args.kv_heads or (heads // 3 if heads % 3 == 0 else heads)
        ffn = args.ffn or 64 * round(hidden * 8 / 3 / 64)
        random_cfg = RandomInitConfig(
            architecture="llama",
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=args.vocab,
            tie_word_embeddings=True,
            rope_theta=100000.0,  # SmolLM2's; neither value costs more than the other
            rms_norm_eps=1e-5,
            seed=0,
        )
        cfg = ModelConfig(name=f"bench_train_h{hidden}_l{args.layers}", source="random", package=None,
                          gguf_file=None, random=random_cfg)
        where = "random llama (project `random` source, BPE trained on the package corpus)"
    else:
        if args.model not in group_options("model"):
            raise SystemExit(f"--model {args.model}: not one of random, {', '.join(group_options('model'))}")
        text = (config_root() / "model" / f"{args.model}.yaml").read_text()
        cfg = ModelConfig.model_validate(yaml.safe_load(text))
        where = f"configs/model/{args.model}.yaml (source {cfg.source})"
    model, _ = load_hf_model(materialize(cfg), dtype=torch.float32)
    return model, where


def param_split(model: nn.Module) -> dict[str, int]:
    """Parameter counts: decoder projections (what BitNet quantizes), tied embedding/head, the rest."""
    proj = sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".layers." in name)
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    untied_head = 0 if head is model.get_input_embeddings().weight else head.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"projections": proj, "embedding": embedding + untied_head, "other": total - proj - embedding - untied_head}


def make_variants(base: nn.Module, ablate: bool, device: torch.device) -> list[Variant]:
    """plain (nn.Linear), bitnet (SubLN bitdistill, lambda 1) and, with `ablate`, bitnet without SubLN."""
    from wrinklefree_core.config.training import OptimizerConfig
    from wrinklefree_core.models.convert import convert_to_bitnet
    from wrinklefree_core.config.bitnet import BitNetSettings
    from wrinklefree_core.training.optimizers import build_optimizer

    models = {"plain": base}
    # convert_to_bitnet reuses the Linear's Parameters, so each BitNet model converts its own copy.
    settings = {"bitnet": BitNetSettings(subln="bitdistill", quant_lambda=1.0)}
    if ablate:
        settings["bitnet-nosubln"] = BitNetSettings(subln="none", quant_lambda=1.0)
    for name, bitnet_settings in settings.items():
        models[name] = convert_to_bitnet(copy.deepcopy(base), bitnet_settings)
    variants = []
    for name, model in models.items():
        model.to(device).train()
        if device.type == "cuda":
            model.set_attn_implementation("sdpa")
        variants.append(Variant(name, model, build_optimizer(model, OptimizerConfig(type="adamw"))))
    return variants


# ---------------------------------------------------------------------------------------------- measure


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(v: Variant, ids: torch.Tensor, device: torch.device) -> tuple[float, float, float, float]:
    """One training step of `v` on `ids`; returns (forward + loss, backward, optimizer step + zero_grad)
    seconds and the loss. Gradients are None on entry (the previous step dropped them)."""
    from wrinklefree_core.objectives.ce import cross_entropy_loss

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    _sync(device)
    t0 = time.perf_counter()
    with autocast:
        logits = v.run(input_ids=ids, use_cache=False).logits
        loss = cross_entropy_loss(logits, ids)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    _sync(device)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, float(loss.detach())


def prepare(v: Variant, mode: str) -> contextlib.AbstractContextManager:
    """Set `v.run` for `mode`; the returned context undoes what the stages' mode switched on.

    stages: the BitNet models run as the training stages run them (every block's forward compiled,
    compute.int_matmul's int8 product); plain stays whole-model compiled, the bench's reference.
    """
    from wrinklefree_core.models.bitlinear import set_integer_matmul
    from wrinklefree_core.training.compile import CompiledBlocks

    if mode == "eager":
        v.run = v.model
        return contextlib.nullcontext()
    if mode == "compiled" or v.name == "plain":
        v.run = torch.compile(v.model)
        return contextlib.nullcontext()
    blocks = CompiledBlocks(v.model)
    blocks.on()
    set_integer_matmul(v.model, True)
    v.run = v.model
    stack = contextlib.ExitStack()
    stack.callback(blocks.off)
    stack.callback(set_integer_matmul, v.model, False)
    return stack


def measure(variants: list[Variant], ids: torch.Tensor, device: torch.device, rounds: int, steps: int,
            warmup: int, mode: str) -> tuple[dict[str, float], list[float]]:
    """Warm up (and compile) every variant, then time them in rotating order; return the seconds
    each variant's first step took (the compile, in compiled modes) and the load averages seen."""
    if mode != "eager":
        torch._dynamo.reset()
    with contextlib.ExitStack() as undo:
        for v in variants:
            undo.enter_context(prepare(v, mode))
        return _measure(variants, ids, device, rounds, steps, warmup)


def _measure(variants: list[Variant], ids: torch.Tensor, device: torch.device, rounds: int, steps: int,
             warmup: int) -> tuple[dict[str, float], list[float]]:
    first: dict[str, float] = {}
    for v in variants:
        v.times = {k: [] for k in v.times}
        v.losses = []
        for i in range(warmup):
            f, b, o, loss = train_step(v, ids, device)
            if i == 0:
                first[v.name] = f + b + o
            v.losses.append(loss)
    loads = [os.getloadavg()[0]]
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            for _ in range(steps):
                f, b, o, loss = train_step(v, ids, device)
                for k, t in zip(("fwd", "bwd", "opt", "step"), (f, b, o, f + b + o)):
                    v.times[k].append(t)
                v.losses.append(loss)
        loads.append(os.getloadavg()[0])
    return first, loads


def table_rows(variants: list[Variant], mode: str, tokens: int) -> tuple[list[str], dict[str, float]]:
    """Table rows for `mode`, one per variant, and each variant's median step seconds."""
    med = {v.name: {k: statistics.median(ts) for k, ts in v.times.items()} for v in variants}
    base = med["plain"]
    rows = []
    for v in variants:
        m = med[v.name]
        lo, hi = min(v.times["step"]), max(v.times["step"])
        rows.append(
            f"| {mode:<8} | {v.name:<14} | {m['step'] * 1e3:>8.0f} | {m['fwd'] * 1e3:>7.0f} | "
            f"{m['bwd'] * 1e3:>7.0f} | {m['opt'] * 1e3:>6.0f} | {tokens / m['step']:>8.0f} | "
            f"{m['step'] / base['step']:>7.3f}x | {m['fwd'] / base['fwd']:>6.2f}x | {m['bwd'] / base['bwd']:>6.2f}x | "
            f"{f'{lo * 1e3:.0f}-{hi * 1e3:.0f}':>12} |"
        )
    return rows, {name: m["step"] for name, m in med.items()}


def profile_ops(variants: list[Variant], ids: torch.Tensor, device: torch.device,
                steps: int) -> dict[str, dict[str, float]]:
    """Self time per op (ms per step) of every variant, from torch.profiler over `steps` steps taken in
    turns. Self times do not overlap, so a variant's ops sum to about its step time (plus profiling
    overhead). On CUDA the device time of each kernel is used."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out: dict[str, dict[str, float]] = {v.name: {} for v in variants}
    for _ in range(steps):
        for v in variants:
            with profile(activities=activities) as prof:
                train_step(v, ids, device)
            for e in prof.key_averages():
                t = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
                if t > 0:
                    key = _op_key(e.key)
                    out[v.name][key] = out[v.name].get(key, 0.0) + t / 1e3 / steps
    return out


def _op_key(name: str) -> str:
    """A profiler event name without what differs between two models' compiled graphs for the same
    work (graph number, kernel index, graph hash), so that matching kernels of both models pair up."""
    name = re.sub(r"^graph_\d+_(cpp_fused_.*?)(_\d+)?$", r"\1", name)
    name = re.sub(r"^Torch-Compiled Region: \d+/\d+$", "Torch-Compiled Region", name)
    return re.sub(r"^## Call CompiledFxGraph \S+.*$", "## Call CompiledFxGraph ##", name)


def print_profile(mode: str, ops: dict[str, dict[str, float]], top: int) -> None:
    """For each model other than plain: the `top` ops whose time differs most from plain's, and the totals."""
    base = ops["plain"]
    for name, own in ops.items():
        if name == "plain":
            continue
        keys = sorted(base.keys() | own.keys(), key=lambda k: -abs(own.get(k, 0.0) - base.get(k, 0.0)))
        print(f"# profile ({mode}), {name} vs plain, ms per step, the {top} ops that differ most:")
        header = f"| {'op':<64} | {'plain':>8} | {name[:10]:>10} | {'delta':>8} |"
        print(header)
        print("|" + "|".join("-" * len(col) for col in header.split("|")[1:-1]) + "|")
        for k in keys[:top]:
            a, b = base.get(k, 0.0), own.get(k, 0.0)
            label = k if len(k) <= 64 else k[:61] + "..."
            print(f"| {label:<64} | {a:>8.1f} | {b:>10.1f} | {b - a:>+8.1f} |")
        rest = sum(own.get(k, 0.0) - base.get(k, 0.0) for k in keys[top:])
        print(f"| {'(all other ops)':<64} | {'':>8} | {'':>10} | {rest:>+8.1f} |")
        print(f"| {'total self time':<64} | {sum(base.values()):>8.1f} | {sum(own.values()):>10.1f} | "
              f"{sum(own.values()) - sum(base.values()):>+8.1f} |")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random",
                        help="random (default) or an option of configs/model, e.g. smollm2_135m")
    parser.add_argument("--hidden", type=int, default=576, help="random model width (default 576)")
    parser.add_argument("--layers", type=int, default=8, help="random model decoder layers (default 8)")
    parser.add_argument("--ffn", type=int, default=None,
                        help="random model MLP width (default 8/3 hidden, 64-rounded: 1536)")
    parser.add_argument("--heads", type=int, default=None, help="random model query heads (default hidden/64)")
    parser.add_argument("--kv-heads", type=int, default=None,
                        help="random model KV heads (default heads/3 when it divides, else heads)")
    parser.add_argument("--vocab", type=int, default=8192, help="random model BPE vocabulary (default 8192)")
    parser.add_argument("--batch", type=int, default=4, help="rows per step (default 4)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per row (default 256)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds, model order rotating (default 6)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model per round (default 1)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per model and mode, the first compiles (default 2)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the torch.compile'd models (default on)")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                        help="time the eager models (default on)")
    parser.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the BitNet models as the training stages run them: per-block compile "
                             "and the int8 product (compute.compile, compute.int_matmul; default on)")
    parser.add_argument("--ablate", action="store_true",
                        help="add a BitNet model without SubLN (splits SubLN from quantization)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile 2 steps per model and list the N ops that differ most from plain "
                             "(compiled mode then records inductor's kernels too, which adds a little to every kernel)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 1:
        raise SystemExit("--warmup must be >= 1: the first step allocates optimizer state (and compiles)")
    if args.profile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # names each generated C++ kernel in the profile

    device = torch.device(args.device)
    load_start = os.getloadavg()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    precision = "fp32 weights, bf16 autocast, sdpa attention" if device.type == "cuda" else "fp32, eager attention"
    print(f"# {where}, torch {torch.__version__}, {precision}")

    torch.manual_seed(0)
    t0 = time.perf_counter()
    base, source = build_model(args)
    c = base.config
    split = param_split(base)
    total = sum(split.values())
    print(f"# model: {source}; hidden {c.hidden_size}, {c.num_hidden_layers} layers, ffn {c.intermediate_size}, "
          f"{c.num_attention_heads} heads / {c.num_key_value_heads} KV heads, vocab {c.vocab_size}, "
          f"tied {c.tie_word_embeddings} (loaded in {time.perf_counter() - t0:.0f}s)")
    print(f"# params: {total / 1e6:.1f}M = projections {split['projections'] / 1e6:.1f}M "
          f"({split['projections'] / total:.1%}, BitLinear in the BitNet model) + embedding/head "
          f"{split['embedding'] / 1e6:.1f}M ({split['embedding'] / total:.1%}) + norms {split['other'] / 1e3:.0f}k")
    variants = make_variants(base, args.ablate, device)

    tokens = args.batch * args.seq
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (args.batch, args.seq), generator=generator).to(device)
    print(f"# step: batch {args.batch} x seq {args.seq} = {tokens} tokens, forward + CE + backward + AdamW; "
          f"{args.warmup} warmup steps, then {args.rounds} rounds x {args.steps} steps per model "
          f"(rotating order), median")

    modes = (["eager"] if args.eager else []) + (["compiled"] if args.compile else []) + (["stages"] if args.stages else [])
    rows: list[str] = []
    notes: list[str] = []
    ratios: dict[str, float] = {}
    t_all = time.perf_counter()
    for mode in modes:
        t_mode = time.perf_counter()
        first, loads = measure(variants, ids, device, args.rounds, args.steps, args.warmup, mode)
        t_mode = time.perf_counter() - t_mode
        mode_rows, med = table_rows(variants, mode, tokens)
        rows += mode_rows
        ratios[mode] = med["bitnet"] / med["plain"]
        firsts = ", ".join(f"{name} {s:.1f}s" for name, s in first.items())
        compile_note = "with compile, " if mode != "eager" else ""
        notes.append(f"# {mode}: first step ({compile_note}not timed) {firsts}; {t_mode:.0f}s in all; "
                     f"1-min load average {min(loads):.2f}-{max(loads):.2f} during timing")
        notes.append(f"# {mode}: loss at the first warmup -> last timed step: " + ", ".join(
            f"{v.name} {v.losses[0]:.3f} -> {v.losses[-1]:.3f}" for v in variants))
        if args.profile:
            print_profile(mode, profile_ops(variants, ids, device, steps=2), args.profile)

    print(f"# load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} (1/5/15 min); "
          f"timing took {time.perf_counter() - t_all:.0f}s")
    header = (f"| {'mode':<8} | {'model':<14} | {'step ms':>8} | {'fwd ms':>7} | {'bwd ms':>7} | {'opt ms':>6} | "
              f"{'tokens/s':>8} | {'vs plain':>8} | {'fwd vs':>7} | {'bwd vs':>7} | {'step min-max':>12} |")
    print(header)
    print("|" + "|".join("-" * len(col) for col in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(row)
    for note in notes:
        print(note)
    for mode, ratio in ratios.items():
        print(f"# target: bitnet step <= 1.20x plain ({mode}) -> {ratio:.3f}x ({'met' if ratio <= 1.2 else 'NOT met'})")
    if "stages" in ratios:
        ratio = ratios["stages"]
        verdict = "goal met" if ratio <= 1.0 else "met" if ratio <= 1.1 else "NOT met"
        print(f"# target: bitnet step as the stages run it <= 1.10x the plain compiled step (goal 1.00x) -> {ratio:.3f}x ({verdict})")


if __name__ == "__main__":
    main()
