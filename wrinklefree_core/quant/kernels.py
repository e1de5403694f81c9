"""Triton kernels for the fake quantizers with the STE blend, and their autograd wrappers.

They compute exactly what `reference.py` defines, in fp32, and round once to the input dtype:

- activations: one program per row (token). s = (1 / clamp(max|x|, eps)) * 127, written that way
  because the reference's `127 / t` is `t.reciprocal() * 127` in torch; x_q = clamp(rint(x * s));
  q = x_q / s; out = x + lam * (q - x). Rows up to MAX_ROW_BLOCK wide stay in registers; wider rows
  loop twice over the row (max, then quantize).
- weights: the absmean scale is reduced on the device in two deterministic stages. Kernel 1 writes
  one partial sum of |W| per chunk; kernel 2 sums the (at most MAX_PARTIALS) partials in every
  program, computes s = clamp(sum / numel, eps) and quantizes its chunk. Nothing is read by the host,
  and the fixed reduction tree makes the scale bitwise reproducible run to run (atomics would not).
  Its summation order differs from torch's mean, so s can differ from the reference in the last ulp.
- lam is read from a 0-dim fp32 tensor, so changing it neither recompiles nor syncs.

Numerics that must match torch on every backend (the interpreter included):
- rounding is half-to-even like torch.round, done by adding and subtracting 1.5 * 2**23;
- divisions use div_rn, because Triton's `/` on fp32 is an approximate division on NVIDIA;
- launches pass enable_fp_fusion=False, so `x + lam * d` is not contracted into an fma;
- bf16 results are rounded to nearest-even with integer ops before the cast, because the
  interpreter's fp32 -> bf16 cast truncates.

For bf16/fp16 inputs the result equals the fp32 reference applied to the upcast input, rounded once.
The eager torch path instead rounds each blend op to the input dtype, so at 0 < lam the two can
differ by about one ulp of the input dtype (they agree exactly at lam = 0).

The backward of both wrappers is the identity (the straight-through estimator). NaN inputs are
not reproduced: Triton's max and clamp drop NaNs where torch propagates them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from wrinklefree_core.quant.reference import ACT_EPS, WEIGHT_EPS

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_ROW_BLOCK = 8192  # widest row kept in registers; wider rows loop over blocks of LOOP_ROW_BLOCK
LOOP_ROW_BLOCK = 4096
WEIGHT_BLOCK = 1024
MAX_PARTIALS = 512  # kernel 2 reloads every partial in each program, so keep them few


@triton.jit
def _rint(v):
    # Adding 1.5 * 2**23 moves |v| <= 2**22 into [2**23, 2**24), where fp32 spacing is 1, so the
    # add itself rounds half-to-even; subtracting it back is exact. Larger |v| are left as they are:
    # every caller clamps to a range far inside +-2**22 right after.
    r = (v + 12582912.0) - 12582912.0
    return tl.where(tl.abs(v) <= 4194304.0, r, v)


@triton.jit
def _to_out(v, OUT_BF16: tl.constexpr):
    # Round fp32 -> bf16 to nearest-even with integer ops; the cast after it is then exact on every
    # backend. fp32/fp16 outputs are left to the cast (both round to nearest-even already).
    if OUT_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        v = tl.where(v == v, bits.to(tl.float32, bitcast=True), v)
    return v


@triton.jit
def _act_blend(x, s, lam):
    xq = tl.minimum(tl.maximum(_rint(x * s), -128.0), 127.0)
    q = tl.math.div_rn(xq, s)
    return x + lam * (q - x)


@triton.jit
def _act_quant_ste_kernel(
    x_ptr,
    out_ptr,
    lam_ptr,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    OUT_BF16: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    out_row = out_ptr + row * n_cols
    lam = tl.load(lam_ptr).to(tl.float32)
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=0)
        s = tl.math.div_rn(1.0, tl.maximum(amax, eps)) * 127.0
        out = _to_out(_act_blend(x, s, lam), OUT_BF16)
        tl.store(out_row + cols, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            acc = tl.maximum(acc, tl.abs(x))
        amax = tl.max(acc, axis=0)
        s = tl.math.div_rn(1.0, tl.maximum(amax, eps)) * 127.0
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            out = _to_out(_act_blend(x, s, lam), OUT_BF16)
            tl.store(out_row + start + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _abs_sum_partial_kernel(w_ptr, partial_ptr, n, chunk, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        acc += tl.abs(tl.load(w_ptr + idx, mask=idx < n, other=0.0).to(tl.float32))
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _weight_quant_ste_kernel(
    w_ptr,
    out_ptr,
    partial_ptr,
    scale_ptr,
    lam_ptr,
    n,
    n_partials,
    chunk,
    eps,
    BLOCK: tl.constexpr,
    P_BLOCK: tl.constexpr,
    OUT_BF16: tl.constexpr,
):
    pid = tl.program_id(0)
    # Every program reduces the same partials in the same order, so all see the same scale.
    p_offs = tl.arange(0, P_BLOCK)
    partials = tl.load(partial_ptr + p_offs, mask=p_offs < n_partials, other=0.0)
    total = tl.sum(partials, axis=0)
    # tl.cast, not n.to(): Triton passes an int argument equal to 1 as a constexpr
    s = tl.maximum(tl.math.div_rn(total, tl.cast(n, tl.float32)), eps)
    if pid == 0:
        tl.store(scale_ptr, s)
    lam = tl.load(lam_ptr).to(tl.float32)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        mask = idx < n
        w = tl.load(w_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        wq = tl.minimum(tl.maximum(_rint(tl.math.div_rn(w, s)), -1.0), 1.0)
        out = _to_out(w + lam * (wq * s - w), OUT_BF16)
        tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=mask)


def _lam_tensor(lam: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """lam as a 0-dim fp32 tensor on `device`; a Python float becomes a device fill, not a copy."""
    if isinstance(lam, torch.Tensor):
        return lam.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.full((), float(lam), dtype=torch.float32, device=device)


def _check_dtype(t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"Triton quant kernels support {SUPPORTED_DTYPES}, got {t.dtype}")


def activation_quant_ste_forward(x: torch.Tensor, lam: torch.Tensor | float, eps: float = ACT_EPS) -> torch.Tensor:
    """Forward value of the per-token int8 fake quant blended by `lam` (no autograd)."""
    _check_dtype(x)
    x_c = x.contiguous()
    out = torch.empty_like(x_c)
    n_cols = x_c.shape[-1] if x_c.dim() else 1
    if x_c.numel() == 0:
        return out
    n_rows = x_c.numel() // n_cols
    one_block = triton.next_power_of_2(n_cols) <= MAX_ROW_BLOCK
    block = triton.next_power_of_2(n_cols) if one_block else LOOP_ROW_BLOCK
    num_warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    _act_quant_ste_kernel[(n_rows,)](
        x_c,
        out,
        _lam_tensor(lam, x.device),
        n_cols,
        eps,
        BLOCK=block,
        ONE_BLOCK=one_block,
        OUT_BF16=x.dtype == torch.bfloat16,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return out


def weight_quant_ste_forward(
    w: torch.Tensor, lam: torch.Tensor | float, eps: float = WEIGHT_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward value of the ternary fake quant blended by `lam`, and the absmean scale (0-dim fp32).

    Two launches, no host sync. The scale is returned so that tests and exporters can compare it
    with the reference without recomputing it.
    """
    _check_dtype(w)
    w_c = w.contiguous()
    out = torch.empty_like(w_c)
    scale = torch.empty((), dtype=torch.float32, device=w.device)
    n = w_c.numel()
    if n == 0:
        return out, scale.fill_(float("nan"))  # torch's mean of an empty tensor is NaN as well
    n_partials = min(triton.cdiv(n, WEIGHT_BLOCK), MAX_PARTIALS)
    chunk = triton.cdiv(triton.cdiv(n, n_partials), WEIGHT_BLOCK) * WEIGHT_BLOCK
    n_partials = triton.cdiv(n, chunk)
    partials = torch.empty(n_partials, dtype=torch.float32, device=w.device)
    _abs_sum_partial_kernel[(n_partials,)](
        w_c, partials, n, chunk, BLOCK=WEIGHT_BLOCK, num_warps=4, enable_fp_fusion=False
    )
    _weight_quant_ste_kernel[(n_partials,)](
        w_c,
        out,
        partials,
        scale,
        _lam_tensor(lam, w.device),
        n,
        n_partials,
        chunk,
        eps,
        BLOCK=WEIGHT_BLOCK,
        P_BLOCK=MAX_PARTIALS,
        OUT_BF16=w.dtype == torch.bfloat16,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return out, scale


class _ActivationQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        return activation_quant_ste_forward(x, lam)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out, None


class _WeightQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        out, _ = weight_quant_ste_forward(w, lam)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out, None


def activation_quant_ste_triton(x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Per-token int8 fake quant of `x` blended by `lam`; the gradient w.r.t. `x` is the identity."""
    return _ActivationQuantSTE.apply(x, lam)


def weight_quant_ste_triton(w: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Ternary absmean fake quant of `w` blended by `lam`; the gradient w.r.t. `w` is the identity."""
    return _WeightQuantSTE.apply(w, lam)
