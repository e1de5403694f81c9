"""Ternary blocks hold exactly fp16(s) * W_q in every GGUF type the exporter uses; float tensors as asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from wrinklefree_core.export.gguf_layout import ExportError, permute_rows, unpermute_rows
from wrinklefree_core.export.gguf_quant import encode_float, encode_ternary, fp16_scale, ternary_type_for, type_nbytes
from wrinklefree_core.quant.reference import ternarize_weight


def weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return 0.02 * torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "qtype,cols",
    [(T.TQ2_0, 256), (T.TQ2_0, 768), (T.TQ1_0, 256), (T.TQ1_0, 512), (T.Q4_0, 64), (T.Q4_0, 576), (T.Q8_0, 96)],
)
def test_ternary_blocks_dequantize_to_s_times_wq(qtype, cols):
    w = weight(48, cols)
    enc = encode_ternary(w, qtype, "w")
    wq, s = ternarize_weight(w)
    expected = wq.numpy() * np.float32(np.float16(s.item()))
    got = quants.dequantize(enc.data, qtype)
    assert got.shape == (48, cols)
    np.testing.assert_array_equal(got, expected)
    assert enc.scale == float(np.float16(s.item()))
    assert enc.nbytes == type_nbytes((48, cols), qtype)


def test_stock_tq2_quantizer_round_trips_ternary_times_scale():
    """The premise of using gguf's own TQ quantizers: for s*W_q data the block absmax is s."""
    wq, s = ternarize_weight(weight(16, 512, seed=3))
    for qtype in (T.TQ2_0, T.TQ1_0):
        back = quants.dequantize(quants.quantize((wq * s).numpy(), qtype), qtype)
        np.testing.assert_array_equal(back, wq.numpy() * np.float32(np.float16(s.item())))


def test_stock_q4_0_quantizer_is_not_exact_which_is_why_blocks_are_packed_directly():
    wq, s = ternarize_weight(weight(8, 64, seed=4))
    data = (wq * s).numpy()
    back = quants.dequantize(quants.quantize(data, T.Q4_0), T.Q4_0)
    assert np.abs(back - data).max() > 0.1 * s.item()  # one sign lands on 7/8 of s


def test_type_choice_by_input_width():
    assert ternary_type_for(256, "tq2_0", "q4_0") == T.TQ2_0
    assert ternary_type_for(1536, "tq1_0", "q4_0") == T.TQ1_0
    assert ternary_type_for(576, "tq2_0", "q4_0") == T.Q4_0
    assert ternary_type_for(64, "tq2_0", "q8_0") == T.Q8_0
    with pytest.raises(ExportError, match="multiple of 32"):
        ternary_type_for(100, "tq2_0", "q4_0")


def test_scales_fp16_cannot_hold_are_refused():
    with pytest.raises(ExportError, match="fp16"):
        fp16_scale(1e-6, "tiny")
    assert fp16_scale(0.0123, "ok") == float(np.float16(0.0123))


def test_float_tensors_and_f16_overflow():
    t = torch.tensor([[1.0, -2.5], [3.0, 1e-3]])
    assert encode_float(t, T.F16, "e").data.dtype == np.float16
    assert encode_float(t, T.F32, "e").data.dtype == np.float32
    with pytest.raises(ExportError, match="float_type=f32"):
        encode_float(t * 1e5, T.F16, "big")


def test_rope_permutation_is_inverted_exactly():
    w = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3)
    p = permute_rows(w, 8)
    assert not torch.equal(p, w)
    assert torch.equal(unpermute_rows(p, 8), w)
    # Within a head, rows [0..h/2) and [h/2..h) (rotate_half pairs) become adjacent pairs.
    assert torch.equal(p[:2, 0], torch.tensor([0.0, 8 * 3.0]))
