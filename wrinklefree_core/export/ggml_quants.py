"""llama.cpp's own quantizer (ggml_quantize_chunk) for the block types gguf-py only reads: the K-quants.

Design choices:
- The K-quants' encoders search scales per sub-block; a second implementation would differ from
  llama.cpp's in the last bit and there is no reason to own one. llama-cpp-python ships ggml as a
  shared library, so the exporter calls the same C function `llama-quantize` uses, through ctypes.
  The library is the one that also runs verification, so the two cannot drift apart.
- Without an importance matrix (none here) ggml uses its reference encoders, plain C with no SIMD
  path, so the bytes do not depend on the CPU that exports.
- Decoding stays gguf-py's (`gguf.quants.dequantize`), which implements every K-quant.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from wrinklefree_core.export.gguf_types import encoded_by

T = GGMLQuantizationType
K_QUANTS = encoded_by("ggml")  # the K-quant rows of gguf_types.py
K_BLOCK = 256


class GGMLUnavailable(RuntimeError):
    """llama-cpp-python (which ships ggml) is not installed."""


@functools.cache
def _ggml() -> ctypes.CDLL:
    try:
        import llama_cpp
    except ImportError as e:
        raise GGMLUnavailable(
            f"K-quant types are encoded by llama.cpp's ggml library, and llama-cpp-python is not installed ({e}). "
            "Install it (pip install llama-cpp-python) or export with float_type=q8_0."
        ) from e
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def quantize(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Encode `values` (rows along the last axis, a multiple of 256 long) as `qtype` blocks: uint8 rows."""
    if qtype not in K_QUANTS:
        raise ValueError(f"{qtype.name} is not a K-quant")
    arr = np.ascontiguousarray(values, dtype=np.float32)
    width = arr.shape[-1]
    if width % K_BLOCK:
        raise ValueError(f"{qtype.name} needs rows that are a multiple of {K_BLOCK} long, got {width}")
    rows = arr.size // width
    lib = _ggml()
    row_bytes = lib.ggml_row_size(int(qtype), width)
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), arr.ctypes.data, out.ctypes.data, 0, rows, width, None)
    if written != out.nbytes:
        raise RuntimeError(f"ggml wrote {written} bytes of {qtype.name}, expected {out.nbytes}")
    return out.reshape(*arr.shape[:-1], row_bytes)
