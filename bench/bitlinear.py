"""BitLinear vs nn.Linear: forward + backward time per shape, eager and torch.compile'd.

Target: BitLinear / nn.Linear <= 1.10x with torch.compile (the quantization must cost at most 10%
of a training step's matmul time).

Run:
    .venv/bin/python bench/bitlinear.py                      # defaults, ~1-2 min on 2 CPU cores
    .venv/bin/python bench/bitlinear.py --iters 20 --modes compiled --shapes 2048x576x576

Design choices:
- One step is y = layer(x); y.backward(g) with x requiring grad, so it includes the weight and input
  gradients, as in a training step. Both layers are bias-free and have the same shape.
- nn.Linear and BitLinear steps alternate within one loop, so load from other processes on a shared
  machine hits both alike; the reported time is the median over the timed iterations.
- BitLinear runs at quant_lambda = 1 (the steady state after warmup). On CUDA its eager forward uses
  the Triton kernels and everything runs in bf16; torch.compile'd BitLinear always runs the torch
  reference, which inductor fuses. On CPU everything is fp32.
- The `diff c/e` column is the largest |compiled - eager| of the BitLinear forward on the same input
  (0 means inductor reproduced the eager reference bit for bit; see bench/RESULTS.md for why it
  can be one ulp off).
- On a small shared CPU, OpenMP threads stall whenever another process takes a core, and BitLinear
  has more parallel regions than nn.Linear; `--threads 1` gives steadier ratios there.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.quant.ops import use_triton_for

CPU_SHAPES = ["2048x576x576", "2048x576x1536", "2048x1536x576", "2048x1024x1024"]
GPU_EXTRA_SHAPES = ["2048x2048x2048", "2048x2048x8192", "2048x8192x2048", "2048x4096x4096"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(module: nn.Module, x: torch.Tensor, g: torch.Tensor):
    def step() -> None:
        x.grad = None
        for p in module.parameters():
            p.grad = None
        module(x).backward(g)

    return step


def time_pair(steps: dict[str, callable], device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    """Median seconds per step for each named step, timing them alternately."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_shape(shape: str, mode: str, device: torch.device, dtype: torch.dtype, iters: int, warmup: int) -> dict:
    """Time one (tokens, in, out) shape in one mode ("eager" or "compiled")."""
    tokens, d_in, d_out = (int(v) for v in shape.split("x"))
    torch.manual_seed(0)
    linear = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype)
    bitlinear = BitLinear(d_in, d_out, bias=False, quant_lambda=1.0, device=device, dtype=dtype)
    with torch.no_grad():
        bitlinear.weight.copy_(linear.weight)
    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(tokens, d_out, device=device, dtype=dtype)

    run_linear, run_bitlinear = linear, bitlinear
    diff = float("nan")
    t_compile = 0.0
    if mode == "compiled":
        torch._dynamo.reset()
        run_linear, run_bitlinear = torch.compile(linear), torch.compile(bitlinear)
        t0 = time.perf_counter()
        _make_step(run_linear, x, g)()
        _make_step(run_bitlinear, x, g)()
        _sync(device)
        t_compile = time.perf_counter() - t0
        with torch.no_grad():
            diff = (run_bitlinear(x) - bitlinear(x)).abs().max().item()

    med = time_pair(
        {"linear": _make_step(run_linear, x, g), "bitlinear": _make_step(run_bitlinear, x, g)}, device, iters, warmup
    )
    path = "torch" if mode == "compiled" or not use_triton_for(x) else "triton"
    return {
        "shape": shape,
        "mode": mode,
        "path": path,
        "linear_ms": med["linear"] * 1e3,
        "bitlinear_ms": med["bitlinear"] * 1e3,
        "ratio": med["bitlinear"] / med["linear"],
        "diff": diff,
        "compile_s": t_compile,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per layer (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per layer before timing")
    parser.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    parser.add_argument("--shapes", default=None, help="comma list of TOKENSxINxOUT (default: by device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = args.shapes.split(",") if args.shapes else CPU_SHAPES + (GPU_EXTRA_SHAPES if device.type == "cuda" else [])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"# {where}, {torch.get_num_threads()} threads, torch {torch.__version__}, {dtype}, "
          f"iters={args.iters} warmup={args.warmup}")
    header = f"| {'tokens x in x out':<18} | {'mode':<8} | {'path':<6} | {'nn.Linear ms':>12} | {'BitLinear ms':>12} | {'ratio':>6} | {'diff c/e':>9} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for shape in shapes:
        for mode in args.modes.split(","):
            r = bench_shape(shape, mode, device, dtype, args.iters, args.warmup)
            diff = "-" if r["diff"] != r["diff"] else f"{r['diff']:.1e}"
            print(f"| {r['shape']:<18} | {r['mode']:<8} | {r['path']:<6} | {r['linear_ms']:>12.2f} | "
                  f"{r['bitlinear_ms']:>12.2f} | {r['ratio']:>5.2f}x | {diff:>9} |", flush=True)


if __name__ == "__main__":
    main()
