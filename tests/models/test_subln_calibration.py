"""Calibrated SubLN gains: the least-squares math, and a converted model that stays close to its source."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.models.tiny import tiny_model, token_ids
from wrinklefree_core.models.bitlinear import set_quant_lambda
from wrinklefree_core.models.convert import bitlinear_modules, convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.models.subln_calibration import SubLNStats, apply_subln_gains, fit_subln_gains


def test_constant_token_rms_gives_that_rms_as_every_gain():
    """If every token has RMS c, g * x / rms(x) reproduces x exactly with g = c."""
    x = torch.randn(50, 16, dtype=torch.float64)
    x = 3.5 * x / x.pow(2).mean(-1, keepdim=True).sqrt()
    stats = SubLNStats(16, eps=0.0)
    stats.add(x[:20])
    stats.add(x[20:])
    torch.testing.assert_close(stats.gains(), torch.full((16,), 3.5), rtol=1e-6, atol=0)


def test_gain_is_the_per_channel_least_squares_fit():
    x = torch.randn(200, 8) * torch.linspace(0.1, 5.0, 8)
    stats = SubLNStats(8, eps=1e-5)
    stats.add(x)
    n = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5)
    # lstsq per channel: minimise ||g_c n_c - x_c||^2
    expected = torch.stack([torch.linalg.lstsq(n[:, c : c + 1], x.double()[:, c : c + 1]).solution[0, 0] for c in range(8)])
    torch.testing.assert_close(stats.gains(), expected.float(), rtol=1e-5, atol=1e-6)


def test_a_channel_never_seen_nonzero_gets_the_median_gain():
    x = torch.randn(30, 5)
    x[:, 2] = 0.0
    stats = SubLNStats(5, eps=1e-6)
    stats.add(x)
    g = stats.gains()
    assert g[2] == g[[0, 1, 3, 4]].median() and bool((g > 0).all())


def test_all_zero_inputs_are_refused():
    stats = SubLNStats(4, eps=1e-6)
    stats.add(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="only zero inputs"):
        stats.gains()


def logits_mse(model, teacher, ids) -> float:
    with torch.no_grad():
        return (model(ids).logits - teacher(ids).logits).pow(2).mean().item()


@pytest.mark.parametrize("arch", ["llama-tied", "qwen3"])
def test_calibrated_conversion_stays_closer_to_the_source_model(arch):
    """At quant_lambda=0 the only change is the SubLN; fitted gains must undo most of what ones do."""
    teacher = tiny_model(arch).eval()
    settings = BitNetSettings(quant_lambda=0.0)
    calibration, held_out = token_ids(8, 16, seed=3), token_ids(4, 16, seed=4)

    ones = convert_to_bitnet(copy.deepcopy(teacher), settings)
    calibrated = copy.deepcopy(teacher)
    gains = fit_subln_gains(calibrated, settings, calibration)
    convert_to_bitnet(calibrated, settings)
    apply_subln_gains(calibrated, gains)

    assert set(gains) == {name for name, m in bitlinear_modules(calibrated) if m.sub_norm is not None}
    assert logits_mse(calibrated, teacher, held_out) < 0.2 * logits_mse(ones, teacher, held_out)
    set_quant_lambda(calibrated, 1.0)  # and it is still a working ternary model
    assert torch.isfinite(calibrated(held_out).logits).all()


def test_fit_does_not_depend_on_batch_size():
    teacher = tiny_model("llama-tied")
    ids = token_ids(6, 12, seed=5)
    one = fit_subln_gains(teacher, BitNetSettings(), ids, batch_size=1)
    six = fit_subln_gains(teacher, BitNetSettings(), ids, batch_size=6)
    for name in one:
        torch.testing.assert_close(one[name], six[name], rtol=1e-5, atol=1e-6)


def test_no_subln_means_nothing_to_fit_and_foreign_gains_are_refused():
    teacher = tiny_model("llama-tied")
    assert fit_subln_gains(teacher, BitNetSettings(subln="none"), token_ids()) == {}
    plain = convert_to_bitnet(copy.deepcopy(teacher), BitNetSettings(subln="none"))
    gains = fit_subln_gains(teacher, BitNetSettings(), token_ids())
    with pytest.raises(ValueError, match="has no SubLN"):
        apply_subln_gains(plain, gains)
    with pytest.raises(ValueError, match="non-empty"):
        fit_subln_gains(teacher, BitNetSettings(), torch.zeros(0, 4, dtype=torch.long))
