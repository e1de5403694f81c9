"""A PyTorch forward that computes what llama.cpp's CPU backend computes for an exported GGUF.

The exact BitNet model (per-token int8 activations over the whole row) and llama.cpp (activations
quantized per block by the weight type's `vec_dot_type`) differ by quantization noise of ~1% on the
logits, far above the size of any real export bug one would want to catch. Modelling llama.cpp's
rounding brings the two to float-summation noise (~1e-5 relative), so verification can be tight.

Design choices:
- The HF model runs unchanged; `llamacpp_numerics` swaps the forward of every matmul module (BitLinear,
  full-precision nn.Linear, the embedding) for the duration of a `with` block, as an instance attribute
  that is deleted on exit. RMS norms (the model's and SubLN) are swapped too, for ggml's arithmetic
  (see `ggml_rms_norm`). RoPE, attention and the residual stream are HF's own fp32 code; llama.cpp
  runs them in fp32 too (F32 KV cache, no flash attention), so they are not modelled.
- Every float operation that feeds an activation quantizer is reproduced to the last bit where it
  can be: a one-ulp difference moves a value sitting exactly on a rounding boundary to the other
  side, a whole int8 step, which the next layers amplify to ~1% of the logits. Exact boundaries are
  common, not rare: with unit norm weights (any freshly converted model) the layer-0 Q8 input is an
  fp16 embedding row times one scalar, so -127*x/max is often exactly k+0.5 (8% of the rows of the
  tiny test models' embeddings). Traps on the torch side: `scalar / tensor` is computed as
  `reciprocal(tensor) * scalar` (two roundings, 1 ulp off C's `a/b` for ~25% of inputs), HF's RMSNorm
  takes an fp32 mean (1 ulp off ggml's double-sum mean for ~45% of rows), and torch.sqrt on float32 is
  not correctly rounded on the CPU build (1 ulp off sqrtf for ~20% of inputs); hence torch.div with
  tensor operands, a double sum and a float64 square root below.
- Weights are the values read back from the GGUF file (dequantized with gguf's own code, q/k rows
  un-permuted), so the fp16 rounding of scales and embeddings is exactly what the file holds.
- Matmuls accumulate in float64: ggml's quantized dot products sum int8 x ternary products exactly
  and apply the block scales once, so they are closer to the exact product than an fp32 GEMM over
  dequantized values (whose last-bit noise flips activation roundings downstream).
- Activations, per ggml-cpu's type traits and the AVX2 build of ggml:
  - TQ1_0/TQ2_0 and the K-quants (an embedding or head in Q4_K..Q6_K) -> Q8_K (quantize_row_q8_K_ref, per 256-block; x86 has no SIMD version): m = the
    signed value of largest magnitude (first one), iscale = -127.f/m (one fp32 division),
    q = min(127, round_half_even(iscale*x)), x' = d * q with d = 1/iscale stored as f32.
  - Q4_0/Q8_0 -> Q8_0 (AVX quantize_row_q8_0, per 32-block): a = max|x|, d = a/127 stored as fp16,
    q = round_half_even(x * id) with id = 127.f/a (one fp32 division), x' = fp16(d) * q.
  - F16 -> the activation is rounded to fp16 (products accumulate in f32); F32 -> unchanged.
- LoRA adapters (LRC checkpoints, gguf_lora.py): llama.cpp adds scale * B (A cur) to the base matmul,
  where `cur` is the same f32 tensor the base matmul reads (after SubLN, *before* the Q8 rounding,
  which happens inside the base matmul only). Modelled as two more matmuls with the F32/F16 rule
  above: A's input is h (rounded to fp16 for an F16 adapter), the rank-r intermediate is stored as
  f32 by ggml and rounded again for an F16 B. U and V are read back from the adapter GGUF (U rows
  un-permuted), so the reference holds what llama.cpp holds. A BitLinearLRC without adapter tensors
  runs its base matmul only: that is what llama.cpp computes from the base file alone.
  Measured on the tiny test models (relative L2 of llama.cpp's logits vs the reference): 1e-7 to
  6e-5 (F32 adapters), 9e-5 to 4e-4 (F16, one position whose activation rounding flips) as modelled;
  feeding the adapter the pre-SubLN input instead gives 0.4-0.7, the Q8-rounded input 0.014-0.05,
  and an F16 adapter without the fp16 activation rounding 3e-3.
- `forced_flips()`: within it, every Q8_0 / Q8_K quantizer rounds the one value nearest a rounding
  boundary to the other side. Where the float32 reference flips nothing, the verifier measures with
  it how far one flip in each of a layer's quantizers moves that layer: what a different summation
  order (another kernel, thread count or CPU) can do to llama.cpp.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader, Keys, quants
from torch import nn

from wrinklefree_core.export.gguf_layout import GGUFLayout, unpermute_rows
from wrinklefree_core.export.gguf_rope import ROPE_FREQS_NAME
from wrinklefree_core.export.gguf_types import tensor_type
from wrinklefree_core.export.gguf_lora import LoraLayout
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.lrc import lrc_modules
from wrinklefree_core.models.subln import SubLN

T = GGMLQuantizationType
Q8_K_BLOCK = 256
Q8_0_BLOCK = 32


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor read back from a GGUF: dequantized fp32 values in HF layout, and its GGUF type."""

    value: torch.Tensor
    ggml_type: GGMLQuantizationType


def read_gguf_tensors(path: str | Path, layout: GGUFLayout) -> dict[str, GGUFTensor]:
    """Read and dequantize every tensor of a GGUF, keyed by HF name (q/k rows back in HF order)."""
    specs = layout.by_gguf_name()
    out: dict[str, GGUFTensor] = {}
    for t in GGUFReader(str(path)).tensors:
        if t.name == ROPE_FREQS_NAME:  # llama3 RoPE factors: not a checkpoint weight; the layer check covers them
            continue
        spec = specs[t.name]
        qtype = GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (the input width) first
        value = torch.from_numpy(np.array(quants.dequantize(t.data, qtype), dtype=np.float32)).reshape(shape)
        if spec.permute_heads is not None:
            value = unpermute_rows(value, spec.permute_heads)
        out[spec.hf_name] = GGUFTensor(value.contiguous(), qtype)
    return out


@dataclass(frozen=True)
class LoraPair:
    """One adapter read back from a LoRA GGUF: U (out, rank) in HF row order, V (in, rank), and the
    factor llama.cpp applies to U V^T (alpha / rank, or 1 when alpha is 0)."""

    u: GGUFTensor
    v: GGUFTensor
    scale: float


def read_lora_tensors(path: str | Path, plan: LoraLayout) -> dict[str, LoraPair]:
    """Read a LoRA adapter GGUF back as {HF module name: LoraPair}, with the scale llama.cpp uses.

    Tensors the plan does not know, or a pair missing one half, raise ValueError; pairs the file
    lacks are simply absent from the result (the caller compares the keys with the plan).
    """
    reader = GGUFReader(str(path))
    field = reader.fields.get(Keys.Adapter.LORA_ALPHA)
    alpha = float(field.contents()) if field is not None else 0.0
    names = plan.by_tensor_name()
    halves: dict[str, dict[str, GGUFTensor]] = {}
    for t in reader.tensors:
        if t.name not in names:
            raise ValueError(f"{path}: tensor '{t.name}' belongs to no LRC adapter of the checkpoint")
        spec, half = names[t.name]
        qtype = GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))
        value = torch.from_numpy(np.array(quants.dequantize(t.data, qtype), dtype=np.float32)).reshape(shape)
        if half == "a":
            value = value.T  # lora_a is V^T
        elif spec.permute_heads is not None:
            value = unpermute_rows(value, spec.permute_heads)
        halves.setdefault(spec.module, {})[half] = GGUFTensor(value.contiguous(), qtype)
    out: dict[str, LoraPair] = {}
    for spec in plan.specs:
        got = halves.get(spec.module)
        if got is None:
            continue
        if set(got) != {"a", "b"}:
            raise ValueError(f"{path}: the adapter of '{spec.module}' lacks {spec.b_name if 'a' in got else spec.a_name}")
        rank = got["b"].value.shape[1]
        out[spec.module] = LoraPair(u=got["b"], v=got["a"], scale=alpha / rank if alpha else 1.0)
    return out


_FORCE_FLIP: ContextVar[bool] = ContextVar("force_flip", default=False)


@contextlib.contextmanager
def forced_flips() -> Iterator[None]:
    """Within the block, each activation quantizer rounds its value nearest a boundary the other way (module docstring)."""
    token = _FORCE_FLIP.set(True)
    try:
        yield
    finally:
        _FORCE_FLIP.reset(token)


def _round(r: torch.Tensor) -> torch.Tensor:
    """round_half_even(r); under forced_flips, the element nearest x.5 goes to its other neighbour."""
    q = torch.round(r)
    if _FORCE_FLIP.get() and r.numel():
        # In the last row (the last token's last block): no later token reads it, so the flip
        # moves one token by one step, the size a flip has wherever it stays local.
        flat_r, flat_q = r.reshape(-1, r.shape[-1])[-1], q.reshape(-1, q.shape[-1])[-1]
        i = int(torch.argmin((flat_r - torch.floor(flat_r) - 0.5).abs()))
        flat_q[i] = 2 * torch.floor(flat_r[i]) + 1 - flat_q[i]
    return q


def q8_k_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x as ggml's Q8_K blocks dequantize it (last dim a multiple of 256), in fp32."""
    shape = x.shape
    b = x.float().reshape(-1, Q8_K_BLOCK)
    idx = b.abs().argmax(dim=-1, keepdim=True)  # first index of the largest magnitude, as the C loop
    m = b.gather(-1, idx)
    zero = m == 0
    # -127.f/max as one fp32 division (`-127.0 / m` would be reciprocal(m) * -127: 1 ulp off, see above).
    iscale = torch.div(torch.full_like(m, -127.0), torch.where(zero, torch.ones_like(m), m))
    q = _round(iscale * b).clamp(max=127.0)
    d = torch.div(torch.ones_like(iscale), iscale)
    return torch.where(zero, torch.zeros_like(b), d * q).reshape(shape)


def q8_0_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x as ggml's Q8_0 blocks (AVX2 quantizer) dequantize it (last dim a multiple of 32), in fp32."""
    shape = x.shape
    b = x.float().reshape(-1, Q8_0_BLOCK)
    a = b.abs().amax(dim=-1, keepdim=True)
    d16 = (a / 127.0).half().float()
    safe = torch.where(a == 0, torch.ones_like(a), a)
    inv = torch.where(a == 0, torch.zeros_like(a), torch.div(torch.full_like(a, 127.0), safe))
    q = _round(b * inv)
    return (d16 * q).reshape(shape)


def activation_roundtrip(x: torch.Tensor, weight_type: GGMLQuantizationType) -> torch.Tensor:
    """The activation llama.cpp multiplies with a weight of `weight_type` (its vec_dot_type rounding)."""
    activation = tensor_type(weight_type).activation  # gguf_types.py
    if activation == "q8_k":
        return q8_k_roundtrip(x)
    if activation == "q8_0":
        return q8_0_roundtrip(x)
    if activation == "f16":
        return x.float().half().float()
    return x.float()


def lora_delta(x: torch.Tensor, pair: LoraPair, accumulate: torch.dtype) -> torch.Tensor:
    """scale * U (V^T x) as llama.cpp computes it from x, the f32 input of the base matmul."""
    t = F.linear(activation_roundtrip(x, pair.v.ggml_type).to(accumulate), pair.v.value.T.to(accumulate))
    t = t.float()  # ggml keeps the rank-r intermediate as an f32 tensor
    d = F.linear(activation_roundtrip(t, pair.u.ggml_type).to(accumulate), pair.u.value.to(accumulate))
    return d if pair.scale == 1.0 else d * pair.scale


def _linear_forward(
    weight: GGUFTensor, bias: torch.Tensor | None, accumulate: torch.dtype, lora: LoraPair | None = None
):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self, BitLinear) and self.sub_norm is not None:
            x = self.sub_norm(x)
        # Cast per call, not once: a float64 copy of every weight would double a large model's memory.
        b = None if bias is None else bias.to(accumulate)
        y = F.linear(activation_roundtrip(x, weight.ggml_type).to(accumulate), weight.value.to(accumulate), b)
        if lora is not None:
            y = y + lora_delta(x, lora, accumulate)
        return y.to(x.dtype)

    return forward


def ggml_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm as ggml-cpu computes it (ops.cpp rms_norm_f32, then a MUL by the weight), in fp32.

    sum = double sum of the fp32 squares; mean = (float)(sum / n); scale = 1.0f / sqrtf(mean + eps);
    y = (x * scale) * w. HF's RMSNorm takes an fp32 mean instead, which differs in the last bit.
    """
    h = x.float()
    mean = ((h * h).double().sum(-1, keepdim=True) / h.shape[-1]).float()
    root = torch.sqrt((mean + torch.tensor(eps, dtype=torch.float32)).double()).float()  # = sqrtf
    scale = torch.div(torch.ones_like(root), root)
    return weight.float() * (h * scale)


def _norm_forward(eps: float):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ggml_rms_norm(x, self.weight, eps).to(x.dtype)

    return forward


def _norm_eps(module: nn.Module) -> float | None:
    """The epsilon of an RMS norm module (SubLN, or HF's Llama/Qwen2/Qwen3 RMSNorm), else None."""
    if isinstance(module, SubLN):
        return module.eps
    eps = getattr(module, "variance_epsilon", None)
    weight = getattr(module, "weight", None)
    return float(eps) if eps is not None and isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


def _embedding_forward(weight: GGUFTensor):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, weight.value)

    return forward


@contextlib.contextmanager
def llamacpp_numerics(
    model: nn.Module,
    tensors: dict[str, GGUFTensor],
    accumulate: torch.dtype = torch.float64,
    lora: dict[str, LoraPair] | None = None,
) -> Iterator[nn.Module]:
    """Within the block, `model` computes with the GGUF's weights and llama.cpp's activation rounding.

    `tensors` comes from read_gguf_tensors; `lora` (from read_lora_tensors) adds each module's
    adapter as llama.cpp's LoRA path computes it. Without `lora`, LRC modules run their base matmul
    only, like llama.cpp given the base file alone. A tied lm_head uses the embedding's GGUF tensor, as
    llama.cpp does. Norm weights and biases are F32 in the file, equal to the model's, and stay as they
    are; RMS norms compute with ggml's arithmetic (`ggml_rms_norm`). Matmuls accumulate in `accumulate`:
    float64 by default, because ggml's quantized dot products sum integers exactly and scale once per
    block, which an fp32 GEMM over dequantized values does not; float32 gives a second, equally valid
    rounding of the same computation (see `reference_logits`).
    """
    patched: list[nn.Module] = []
    embed = model.get_input_embeddings()
    embed_name = next(n for n, m in model.named_modules() if m is embed)
    try:
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                key = f"{name}.weight"
                if key not in tensors and name == "lm_head":
                    key = f"{embed_name}.weight"
                bias = tensors[f"{name}.bias"].value if module.bias is not None else None
                pair = (lora or {}).get(name)
                module.forward = types.MethodType(_linear_forward(tensors[key], bias, accumulate, pair), module)
                patched.append(module)
            elif module is embed:
                module.forward = types.MethodType(_embedding_forward(tensors[f"{name}.weight"]), module)
                patched.append(module)
            elif (eps := _norm_eps(module)) is not None:
                module.forward = types.MethodType(_norm_forward(eps), module)
                patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward


def reference_logits(
    model: nn.Module,
    tensors: dict[str, GGUFTensor],
    ids: torch.Tensor,
    accumulate: torch.dtype = torch.float64,
    lora: dict[str, LoraPair] | None = None,
) -> torch.Tensor:
    """Logits (seq, vocab) of the modelled llama.cpp forward for one sequence of token ids.

    `lora` as in llamacpp_numerics (base + adapter); None models the base file alone.

    Comparing the float64 and float32 `accumulate` variants measures the model's own sensitivity to
    float rounding: each activation quantizer turns a last-bit difference into a whole int8 step when a
    value sits on a rounding boundary, and a deep model can amplify such a step. That gap is the noise
    floor no reference can beat, for llama.cpp's fp32 arithmetic has the same kind of rounding.
    """
    with torch.no_grad(), llamacpp_numerics(model, tensors, accumulate, lora):
        return model(ids.view(1, -1)).logits[0].float()


@contextlib.contextmanager
def lrc_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every BitLinearLRC computes its plain BitLinear forward (the exact model
    without its corrections, i.e. what the base GGUF alone is meant to reproduce)."""
    patched = [m for _, m in lrc_modules(model)]
    try:
        for module in patched:
            module.forward = types.MethodType(BitLinear.forward, module)
        yield model
    finally:
        for module in patched:
            del module.forward
