"""The per-layer gate's allowance for a rounding flip in an attention input, which reaches every later token.

Numbers from the distilled SmolLM2-135M export that needed it (docs/LOG.md, 2026-12-08): bound 5.97e-3,
floor 2.48e-3 over 35 tokens, layer 20 at 8.67e-3; a wrong RoPE moves every layer by ~2.5e-2.
"""

from __future__ import annotations

import math

from wrinklefree_core.export.verify_layers import NOISE_FACTOR, layer_failures, spread_allowance, spread_bound

BOUND, FLOOR, TOKENS, MAX_REL = 5.97e-3, 2.48e-3, 35, 1e-3


def rows(errors: list[float]) -> list[dict]:
    return [{"layer": i, "rel_error": e} for i, e in enumerate(errors)]


def test_spread_bound_is_sqrt_tokens_one_token_flips():
    assert spread_bound(MAX_REL, FLOOR, TOKENS) == MAX_REL + NOISE_FACTOR * math.sqrt(TOKENS) * FLOOR
    assert spread_allowance(30) == 3 and spread_allowance(2) == 1


def test_one_spread_flip_passes_and_is_marked():
    layers = rows([1e-3] * 30)
    layers[20]["rel_error"] = 8.67e-3
    assert layer_failures(layers, BOUND, spread_bound(MAX_REL, FLOOR, TOKENS)) == []
    assert layers[20]["spread_flip"] and "spread_flip" not in layers[19]


def test_an_error_in_every_layer_fails_every_layer_even_below_the_spread_bound():
    layers = rows([2.5e-2] * 30)  # a wrong RoPE: below the spread bound (3.0e-2), but everywhere
    failures = layer_failures(layers, BOUND, spread_bound(MAX_REL, FLOOR, TOKENS))
    assert len(failures) == 30 and failures[0].startswith("layer 0: ")
    assert not any(r.get("spread_flip") for r in layers)


def test_more_spread_flips_than_allowed_fail_and_one_above_the_spread_bound_fails():
    spread = spread_bound(MAX_REL, FLOOR, TOKENS)
    layers = rows([1e-3] * 30)
    for i in (3, 9, 15, 21):
        layers[i]["rel_error"] = 8e-3
    assert len(layer_failures(layers, BOUND, spread)) == 4
    layers = rows([1e-3] * 30)
    layers[7]["rel_error"] = 1.01 * spread
    assert layer_failures(layers, BOUND, spread) == [f"layer 7: llama.cpp's output differs from the reference by {1.01 * spread:.3g} of its update > {BOUND:.3g}"]
