"""Encode tensors into GGUF blocks: ternary matrices losslessly, everything else as a float or block type.

Design choices:
- The ternary values come from `quant.reference.ternarize_weight`, the function training uses, so
  the file holds exactly s * W_q with s rounded to fp16 (every ternary-capable GGUF block stores its
  scale as fp16). Nothing is re-quantized from the latent weights by a different rule.
- Type per matrix: `ternary_type` (TQ2_0 / TQ1_0: 256-wide blocks, 2.06 / 1.69 bits per weight) when
  the input width is a multiple of 256, else the lossless 32-wide fallback (Q4_0: 4.5 bits, Q8_0:
  8.5 bits). Both hold {-s, 0, s} exactly: one fp16 scale d = s per block and q = t (+8 for Q4_0).
- TQ blocks go through gguf's own quantizer (block absmax of s*W_q is s, so it round-trips); Q4_0 and
  Q8_0 are packed here, because the stock Q4_0 quantizer maps one sign to -7/8 of s and the stock Q8_0
  one stores s/127 (2e-4 s off). Every encoded ternary tensor is dequantized once and compared with
  fp16(s) * W_q before it is accepted: a silent change of numbers is worse than a failed export.
- Embeddings/output/full-precision matrices: a K-quant (Q4_K..Q6_K, encoded by llama.cpp's own ggml,
  ggml_quants.py), Q8_0, F16 or F32 (float_type); a row too short for the type's block takes the next
  type whose block fits (K-quant -> Q8_0 -> F16; reported per tensor). Norms and biases: F32, as
  llama.cpp expects for 1-D tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants

from wrinklefree_core.export import ggml_quants
from wrinklefree_core.export.gguf_layout import ExportError, permute_rows
from wrinklefree_core.export.gguf_types import TYPES, encoded_by, of_role
from wrinklefree_core.quant.reference import ternarize_weight

T = GGMLQuantizationType
TERNARY_TYPES = of_role("ternary")
FALLBACK_TYPES = of_role("fallback")
FLOAT_TYPES = of_role("float")
TQ_BLOCK = 256
FALLBACK_BLOCK = 32
# Block types of 32 values along a row with one fp16 scale each (gguf_types.py).
BLOCK_32_TYPES = frozenset(t.ggml for t in TYPES if t.block == FALLBACK_BLOCK)
LARGEST_CODE = {t.ggml: t.largest_code for t in TYPES if t.largest_code is not None}
_FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
_FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class EncodedTensor:
    """GGUF-ready data: raw blocks (uint8 rows) for quantized types, a float array otherwise.

    `shape` is the PyTorch shape (out, in); GGUF stores it reversed. `scale` is the fp16-rounded
    ternary scale s (None for float tensors).
    """

    data: np.ndarray
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    scale: float | None = None

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def ternary_type_for(in_features: int, ternary_type: str, fallback_type: str) -> GGMLQuantizationType:
    """The GGUF type for a ternary matrix with this input width, or ExportError when none is lossless."""
    if in_features % TQ_BLOCK == 0:
        return TERNARY_TYPES[ternary_type]
    if in_features % FALLBACK_BLOCK == 0:
        return FALLBACK_TYPES[fallback_type]
    raise ExportError(
        f"A ternary matrix has input width {in_features}, which is not a multiple of {FALLBACK_BLOCK}: no GGUF "
        f"block type holds it losslessly ({TQ_BLOCK} for TQ1_0/TQ2_0, {FALLBACK_BLOCK} for Q4_0/Q8_0). "
        "Use a model whose hidden and intermediate sizes are multiples of 32."
    )


def fp16_scale(s: float, name: str) -> float:
    """s rounded to fp16 (what every ternary block stores); refuse scales fp16 cannot hold to 11 bits."""
    if not (_FP16_MIN_NORMAL <= s <= _FP16_MAX):
        raise ExportError(
            f"The ternary scale of {name} is {s:.3g}, outside fp16's normal range [{_FP16_MIN_NORMAL:.3g}, "
            f"{_FP16_MAX:.0f}]; the GGUF blocks would not hold it accurately. Check the checkpoint's weights."
        )
    return float(np.float16(s))


def _pack_q4_0(t: np.ndarray, s16: float) -> np.ndarray:
    """Q4_0 blocks: fp16 d, then 16 bytes with element j in the low nibble and j+16 in the high one."""
    rows, cols = t.shape
    q = (t.reshape(-1, FALLBACK_BLOCK) + 8).astype(np.uint8)
    qs = q[:, :16] | (q[:, 16:] << np.uint8(4))
    d = np.full((q.shape[0], 1), s16, dtype=np.float16).view(np.uint8)
    return np.concatenate([d, qs], axis=1).reshape(rows, -1)


def _pack_q8_0(t: np.ndarray, s16: float) -> np.ndarray:
    """Q8_0 blocks: fp16 d, then 32 int8 values."""
    rows, cols = t.shape
    q = t.reshape(-1, FALLBACK_BLOCK).astype(np.int8).view(np.uint8)
    d = np.full((q.shape[0], 1), s16, dtype=np.float16).view(np.uint8)
    return np.concatenate([d, q], axis=1).reshape(rows, -1)


# The fallback types hold W_q exactly with d = s: packed here, because gguf-py's Q4_0 quantizer maps one
# sign to -7/8 of s and its Q8_0 one stores s/127. Every `fallback` row of gguf_types.py needs one.
TERNARY_PACKERS = {T.Q4_0: _pack_q4_0, T.Q8_0: _pack_q8_0}


def encode_ternary(
    weight: torch.Tensor, qtype: GGMLQuantizationType, name: str, permute_heads: int | None = None
) -> EncodedTensor:
    """Ternarize `weight` with the training rule and pack it as `qtype`; verify it dequantizes to fp16(s)*W_q.

    `permute_heads` applies llama.cpp's q/k RoPE row permutation to W_q (the per-tensor scale is unchanged).
    """
    wq, s = ternarize_weight(weight.detach())
    if permute_heads is not None:
        wq = permute_rows(wq, permute_heads)
    s32 = float(s)
    s16 = fp16_scale(s32, name)
    t = wq.to(torch.int8).numpy()
    if qtype in TERNARY_TYPES.values():
        data = quants.quantize((wq * s).numpy().astype(np.float32), qtype)
    elif qtype in TERNARY_PACKERS:
        data = TERNARY_PACKERS[qtype](t, s16)
    else:
        raise ExportError(f"{qtype.name} is not a ternary GGUF type")
    back = quants.dequantize(data, qtype)
    if not np.array_equal(back, t.astype(np.float32) * np.float32(s16)):
        bad = float(np.abs(back - t * np.float32(s16)).max())
        raise ExportError(f"{name}: {qtype.name} does not hold s*W_q exactly (max error {bad:.3g}); this is a bug.")
    return EncodedTensor(data, qtype, tuple(weight.shape), s16)


def float_type_for(width: int, qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """`qtype` if a row of `width` values fills its blocks, else the next type whose block fits."""
    if qtype in ggml_quants.K_QUANTS and width % ggml_quants.K_BLOCK:
        qtype = T.Q8_0
    if qtype == T.Q8_0 and width % FALLBACK_BLOCK:
        qtype = T.F16
    return qtype


def _blocks(arr: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype in encoded_by("ggml"):
        return ggml_quants.quantize(arr, qtype)
    return quants.quantize(arr, qtype)


def quantize_roundtrip(t: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """`t` (rows along the last dim) as a tensor of `qtype` dequantizes it: exact for F32, fp16-rounded
    for F16, the type's own blocks otherwise. What a file written by encode_float holds."""
    if qtype == T.F32:
        return t.float()
    if qtype == T.F16:
        return t.float().half().float()
    arr = t.detach().float().contiguous().numpy()
    back = quants.dequantize(_blocks(arr, qtype), qtype)
    return torch.from_numpy(np.array(back, dtype=np.float32)).reshape(t.shape)


def encode_float(tensor: torch.Tensor, qtype: GGMLQuantizationType, name: str) -> EncodedTensor:
    """Write a full-precision tensor as F16, F32, Q8_0 (blocks of 32 along each row, an fp16 scale
    each) or a K-quant (blocks of 256); refuse values that overflow F16 or a block's fp16 scale."""
    arr = tensor.detach().float().numpy()
    if qtype in BLOCK_32_TYPES or qtype in ggml_quants.K_QUANTS:
        peak = float(np.abs(arr).max()) if arr.size else 0.0
        if not np.isfinite(peak) or peak / LARGEST_CODE.get(qtype, 1) > _FP16_MAX:  # K-quants: fp16's range
            raise ExportError(f"{name} has values up to {peak:.3g}, beyond a {qtype.name} block scale. Export with float_type=f32.")
        block = FALLBACK_BLOCK if qtype in BLOCK_32_TYPES else ggml_quants.K_BLOCK
        if tensor.shape[-1] % block:
            raise ExportError(
                f"{name} has rows of {tensor.shape[-1]} values; {qtype.name} needs a multiple of {block}. Use float_type=f16."
            )
        return EncodedTensor(_blocks(np.ascontiguousarray(arr), qtype), qtype, tuple(tensor.shape))
    if qtype == T.F16:
        peak = float(np.abs(arr).max()) if arr.size else 0.0
        if peak > _FP16_MAX:
            raise ExportError(f"{name} has values up to {peak:.3g}, beyond fp16's range. Export with float_type=f32.")
        return EncodedTensor(arr.astype(np.float16), qtype, tuple(tensor.shape))
    if qtype == T.F32:
        return EncodedTensor(arr.astype(np.float32), qtype, tuple(tensor.shape))
    raise ExportError(f"{qtype.name} is not a float GGUF type")


def type_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes a tensor of PyTorch `shape` takes as `qtype` (for the analytic all-F16 size)."""
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * quants.quant_shape_to_byte_shape((shape[-1],), qtype)[-1]
