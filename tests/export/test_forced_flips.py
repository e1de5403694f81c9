"""forced_flips: each activation quantizer rounds the value of its last block (the last token's) nearest a
boundary the other way, by exactly one step."""

from __future__ import annotations

import torch

from wrinklefree_core.export.llamacpp_reference import forced_flips, q8_0_roundtrip, q8_k_roundtrip


def _flip_of(roundtrip, x: torch.Tensor):
    plain = roundtrip(x)
    with forced_flips():
        flipped = roundtrip(x)
    again = roundtrip(x)
    assert torch.equal(plain, again), "the flip must not outlive the block"
    changed = (flipped.flatten() != plain.flatten()).nonzero().flatten().tolist()
    return plain, flipped, changed


def test_q8_0_flips_the_value_nearest_a_boundary_by_one_step():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    b = x.reshape(-1, 32)
    inv = 127.0 / b.abs().amax(-1, keepdim=True)
    r = (b * inv)[-1]  # the last block: no later token reads it
    nearest = b.numel() - 32 + int(torch.argmin((r - torch.floor(r) - 0.5).abs()))
    plain, flipped, changed = _flip_of(q8_0_roundtrip, x)
    assert changed == [nearest]
    d16 = (b.abs().amax(-1) / 127.0).half().float()[nearest // 32]
    assert torch.isclose((flipped.flatten() - plain.flatten())[nearest].abs(), d16)


def test_q8_k_flips_one_value_by_one_step():
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(1))
    plain, flipped, changed = _flip_of(q8_k_roundtrip, x)
    assert len(changed) == 1 and changed[0] >= 256  # in the last block
    i = changed[0]
    row = x.flatten()[(i // 256) * 256 : (i // 256 + 1) * 256]
    step = row.abs().max() / 127.0
    assert torch.isclose((flipped.flatten() - plain.flatten())[i].abs(), step, rtol=1e-5)
