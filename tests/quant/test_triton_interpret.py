"""Triton kernels against the torch reference: forward values and the identity backward.

On CPU the kernels run in Triton's interpreter; on a CUDA machine they are compiled and run on the
GPU. Triton picks interpreter or compiler when a function is decorated, and that includes its own
`tl.max`/`tl.sum` when triton is first imported. tests/quant/conftest.py sets TRITON_INTERPRET=1, but
in a full-suite run triton is usually imported earlier (importing torch._dynamo imports it). Then
these tests run once more in a fresh pytest process with the variable set, and are skipped here.

What is compared exactly and why:
- activations: the kernel must equal the fp32 reference bit for bit (for bf16/fp16 inputs: the
  fp32 reference on the upcast input, rounded once to the input dtype).
- weights: the kernel reduces sum|W| in a different order than torch's mean, so its scale may differ
  from the reference in the last ulps; the test bounds that difference (a few ulps, from the
  summation error bound), then checks the kernel output exactly against the reference formula
  evaluated with the kernel's own scale, and finally that the ternary values only differ from the
  reference ones at elements whose |W/s| lies within that tolerance of the 0.5 rounding boundary.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")

from wrinklefree_core.quant import kernels  # noqa: E402  (after the importorskip)
from wrinklefree_core.quant.ops import quantize_activation_ste, quantize_weight_ste  # noqa: E402
from wrinklefree_core.quant.reference import activation_quant_ref, weight_scale  # noqa: E402
from wrinklefree_core.quant.ste import ste_blend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CHILD_ENV = "WRINKLEFREE_TRITON_TEST_CHILD"


def _interpreted(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


NEEDS_FRESH_PROCESS = DEVICE == "cpu" and not (
    _interpreted(kernels._act_quant_ste_kernel) and _interpreted(triton.language.max)
)


@pytest.fixture(autouse=True)
def _skip_when_compiled_on_cpu(request):
    if NEEDS_FRESH_PROCESS and request.node.originalname != "test_in_fresh_process":
        pytest.skip("triton was imported before TRITON_INTERPRET=1; run by test_in_fresh_process")


def test_in_fresh_process():
    if not NEEDS_FRESH_PROCESS:
        pytest.skip("the kernels run in this process")
    if os.environ.get(CHILD_ENV):
        pytest.fail("TRITON_INTERPRET=1 did not take effect even in a fresh process")
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_ENV: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

LAMS = [0.0, 0.5, 1.0]
ACT_SHAPES = [(4, 576), (3, 1536), (5, 1000), (2, 3, 96), (2, 9000), (1, 7)]
WEIGHT_SHAPES = [(64, 576), (96, 1536), (130, 1000), (7, 13)]


def _act_expected(x: torch.Tensor, lam: float) -> torch.Tensor:
    xf = x.float()
    return ste_blend(xf, activation_quant_ref(xf), torch.tensor(lam, device=x.device)).to(x.dtype)


def _weight_expected(w: torch.Tensor, lam: float, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference formula evaluated with a given scale: (blended output in w.dtype, W_q)."""
    wf = w.float()
    wq = torch.round(wf / s).clamp(-1.0, 1.0)
    return ste_blend(wf, wq * s, torch.tensor(lam, device=w.device)).to(w.dtype), wq


def _scale_rtol(n: int) -> float:
    # Both sums are blocked/pairwise: each has a relative error below ~log2(n) * 2**-24, in practice
    # far less. Their difference is bounded by twice that.
    return 2 * math.log2(max(n, 2)) * 2.0**-24


@pytest.mark.parametrize("shape", ACT_SHAPES)
@pytest.mark.parametrize("lam", LAMS)
def test_activation_forward_fp32(shape, lam):
    torch.manual_seed(0)
    x = torch.randn(shape, device=DEVICE) * 3
    out = kernels.activation_quant_ste_forward(x, lam)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, _act_expected(x, lam))
    # the eager reference path is the same computation in fp32
    assert torch.equal(out, quantize_activation_ste(x, torch.tensor(lam, device=DEVICE), use_triton=False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lam", LAMS)
def test_activation_forward_half(dtype, lam):
    torch.manual_seed(1)
    x = (torch.randn(6, 576, device=DEVICE) * 3).to(dtype)
    out = kernels.activation_quant_ste_forward(x, lam)
    assert out.dtype == dtype
    assert torch.equal(out, _act_expected(x, lam))
    # The eager torch path rounds q, q - x and lam * (q - x) to the input dtype; the kernel rounds
    # once. Exact at lam = 0; otherwise within about one ulp of the input dtype at the row's scale.
    eager = quantize_activation_ste(x, torch.tensor(lam, device=DEVICE), use_triton=False)
    if lam == 0.0:
        assert torch.equal(out, eager)
    ulp = torch.finfo(dtype).eps * x.float().abs().amax(-1, keepdim=True)
    assert ((out.float() - eager.float()).abs() <= ulp).all()


def test_activation_ties_and_zero_rows():
    # Row 0: max 127 gives scale 1, so 2.5 / -2.5 / 0.5 are exact ties (-> 2, -2, 0).
    x = torch.zeros(3, 8, device=DEVICE)
    x[0, :5] = torch.tensor([127.0, 2.5, -2.5, 0.5, 3.5])
    x[2] = torch.linspace(-1, 1, 8)
    out = kernels.activation_quant_ste_forward(x, 1.0)
    assert torch.equal(out[0, :5], torch.tensor([127.0, 2.0, -2.0, 0.0, 4.0], device=DEVICE))
    assert torch.equal(out[1], torch.zeros(8, device=DEVICE))  # all-zero row: eps clamp, no NaN
    assert torch.equal(out, _act_expected(x, 1.0))


def test_activation_non_contiguous_input():
    x = torch.randn(96, 8, device=DEVICE).t()  # (8, 96), last dim strided
    assert torch.equal(kernels.activation_quant_ste_forward(x, 0.5), _act_expected(x, 0.5))


@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
@pytest.mark.parametrize("lam", LAMS)
def test_weight_forward_fp32(shape, lam):
    torch.manual_seed(2)
    w = torch.randn(shape, device=DEVICE) * 0.02
    out, s = kernels.weight_quant_ste_forward(w, lam)
    s_ref = weight_scale(w)
    rtol = _scale_rtol(w.numel())
    assert s.dtype == torch.float32 and s.dim() == 0
    assert abs(s.item() / s_ref.item() - 1.0) <= rtol

    expected, wq = _weight_expected(w, lam, s)
    assert torch.equal(out, expected)

    _, wq_ref = _weight_expected(w, lam, s_ref)
    differs = wq != wq_ref
    near_boundary = ((w.float() / s_ref).abs() - 0.5).abs() <= rtol
    assert not (differs & ~near_boundary).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lam", LAMS)
def test_weight_forward_half(dtype, lam):
    torch.manual_seed(3)
    w = (torch.randn(96, 576, device=DEVICE) * 0.02).to(dtype)
    out, s = kernels.weight_quant_ste_forward(w, lam)
    assert out.dtype == dtype
    assert abs(s.item() / weight_scale(w).item() - 1.0) <= _scale_rtol(w.numel())
    assert torch.equal(out, _weight_expected(w, lam, s)[0])
    if lam == 0.0:
        assert torch.equal(out, w)


def test_weight_ties_and_zeros():
    w = torch.tensor([[0.5, -0.5], [1.5, -1.5]], device=DEVICE)  # s = 1: ties at +-0.5 -> 0
    out, s = kernels.weight_quant_ste_forward(w, 1.0)
    assert s.item() == 1.0
    assert torch.equal(out, torch.tensor([[0.0, 0.0], [1.0, -1.0]], device=DEVICE))

    z = torch.zeros(16, 32, device=DEVICE)
    out, s = kernels.weight_quant_ste_forward(z, 1.0)
    assert torch.equal(s, weight_scale(z)) and torch.equal(out, z)


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_identity(lam, dtype):
    torch.manual_seed(4)
    w = (torch.randn(32, 96, device=DEVICE) * 0.02).to(dtype).requires_grad_()
    x = torch.randn(2, 5, 96, device=DEVICE).to(dtype).requires_grad_()
    gw = torch.randn(32, 96, device=DEVICE).to(dtype)
    gx = torch.randn(2, 5, 96, device=DEVICE).to(dtype)
    lam_t = torch.tensor(lam, device=DEVICE)
    kernels.weight_quant_ste_triton(w, lam_t).backward(gw)
    kernels.activation_quant_ste_triton(x, lam_t).backward(gx)
    assert torch.equal(w.grad, gw) and torch.equal(x.grad, gx)


def test_ops_dispatch_forced_triton_matches_kernels():
    torch.manual_seed(5)
    w = torch.randn(32, 96, device=DEVICE) * 0.02
    x = torch.randn(4, 96, device=DEVICE)
    lam = torch.tensor(0.5, device=DEVICE)
    assert torch.equal(quantize_weight_ste(w, lam, use_triton=True), kernels.weight_quant_ste_forward(w, lam)[0])
    assert torch.equal(quantize_activation_ste(x, lam, use_triton=True), kernels.activation_quant_ste_forward(x, lam))


def test_default_dispatch_on_cpu_is_the_reference(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the Triton path ran on CPU without use_triton=True")

    monkeypatch.setattr(kernels, "weight_quant_ste_triton", fail)
    monkeypatch.setattr(kernels, "activation_quant_ste_triton", fail)
    quantize_weight_ste(torch.randn(4, 8), 1.0)
    quantize_activation_ste(torch.randn(2, 8), 1.0)


def test_disable_env_forces_the_reference(monkeypatch):
    from wrinklefree_core.quant import ops

    monkeypatch.setenv(ops.DISABLE_ENV, "1")
    assert not ops.use_triton_for(torch.randn(2, 8, device=DEVICE))
