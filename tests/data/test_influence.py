"""Influence-based remixing, without Lightning: the DataInf formula, the weight update, per-example
gradients from one batched backward, a known aligned-vs-noise case, and scheduled mixture weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.models.tiny import tiny_llama
from wrinklefree_core.data.example_grads import example_gradients, layer_names, mean_gradients, row_losses
from wrinklefree_core.data.influence import (
    clamp_to_simplex,
    damping_lambda,
    datainf_layer_scores,
    datainf_scores,
    source_scores,
    update_weights,
)
from wrinklefree_core.data.mixture import MixtureSampler
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings


def exact_scores(grads: torch.Tensor, probe: torch.Tensor, lam: float) -> torch.Tensor:
    """v^T (G + lambda I)^-1 g_k with G = (1/n) sum_i g_i g_i^T, by a dense solve."""
    g = grads.double()
    hessian = g.T @ g / g.shape[0] + lam * torch.eye(g.shape[1], dtype=torch.float64)
    return g @ torch.linalg.solve(hessian, probe.double())


def datainf_dense(grads: torch.Tensor, probe: torch.Tensor, lam: float) -> torch.Tensor:
    """DataInf's approximation written out: v^T [(1/n) sum_i (g_i g_i^T + lambda I)^-1] g_k."""
    g = grads.double()
    eye = torch.eye(g.shape[1], dtype=torch.float64)
    inverse = sum(torch.linalg.inv(torch.outer(gi, gi) + lam * eye) for gi in g) / g.shape[0]
    return g @ (inverse @ probe.double())


# ------------------------------------------------------------------------------------------ DataInf


def test_datainf_matches_hand_computed_values():
    # g1 = (1, 0), g2 = (1, 1), v = (2, 1), lambda = 1/2: v.g = (2, 3), Gram [[1, 1], [1, 2]].
    # s_1 = 2 * [2 - (2*1/1.5 + 3*1/2.5) / 2] = 22/15;  s_2 = 2 * [3 - (2*1/1.5 + 3*2/2.5) / 2] = 34/15.
    grads, probe = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([2.0, 1.0])
    scores = datainf_layer_scores(grads, probe, 0.5)
    assert torch.allclose(scores, torch.tensor([22 / 15, 34 / 15], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(scores, datainf_dense(grads, probe, 0.5), atol=1e-12)


def test_datainf_equals_the_closed_form_on_random_gradients():
    gen = torch.Generator().manual_seed(0)
    grads, probe = torch.randn(6, 5, generator=gen), torch.randn(5, generator=gen)
    assert torch.allclose(datainf_layer_scores(grads, probe, 0.3), datainf_dense(grads, probe, 0.3), atol=1e-10)


def test_datainf_is_exact_for_one_example_and_for_dominant_damping():
    gen = torch.Generator().manual_seed(1)
    g, v = torch.randn(1, 7, generator=gen), torch.randn(7, generator=gen)
    assert torch.allclose(datainf_layer_scores(g, v, 0.2), exact_scores(g, v, 0.2), atol=1e-10)
    grads = torch.randn(5, 7, generator=gen)
    lam = 100.0 * float(grads.pow(2).sum(1).max())
    approx, exact = datainf_layer_scores(grads, v, lam), exact_scores(grads, v, lam)
    assert torch.allclose(approx, exact, rtol=1e-3), (approx, exact)


def test_damping_lambda_and_layers_add_up():
    assert damping_lambda(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), 0.1) == pytest.approx(0.1 * 25 / 4)
    gen = torch.Generator().manual_seed(2)
    g1, g2 = torch.randn(4, 3, generator=gen), torch.randn(4, 6, generator=gen)
    v1, v2 = torch.randn(3, generator=gen), torch.randn(6, generator=gen)
    both = datainf_scores([g1, g2], [v1, v2], damping=0.1)
    separate = datainf_layer_scores(g1, v1, damping_lambda(g1, 0.1)) + datainf_layer_scores(g2, v2, damping_lambda(g2, 0.1))
    assert torch.allclose(both, separate)


def test_source_scores_are_means_per_source():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert source_scores(scores, torch.tensor([0, 0, 1, 1]), 3).tolist() == [1.5, 4.0, 0.0]


# ------------------------------------------------------------------------------------ weight update


def test_update_weights_exponentiated_then_smoothed():
    w, s = torch.tensor([0.5, 0.5]), torch.tensor([3.0, -3.0])  # s / max|s| = (1, -1)
    e2 = math.e**2
    plain = update_weights(w, s, step_size=1.0, min_weight=0.0, max_weight=1.0, smoothing=0.0)
    assert plain.tolist() == pytest.approx([e2 / (e2 + 1), 1 / (e2 + 1)])  # (0.8808, 0.1192)
    smoothed = update_weights(w, s, step_size=1.0, min_weight=0.0, max_weight=1.0, smoothing=0.5)
    assert smoothed.tolist() == pytest.approx([0.5 * 0.5 + 0.5 * e2 / (e2 + 1), 0.5 * 0.5 + 0.5 / (e2 + 1)])
    clamped = update_weights(w, s, step_size=1.0, min_weight=0.0, max_weight=0.8, smoothing=0.0)
    assert clamped.tolist() == pytest.approx([0.8, 0.2])


def test_clamp_renormalises_the_free_weights_until_all_are_in_bounds():
    w = torch.full((3,), 1 / 3)
    u = update_weights(w, torch.tensor([1.0, 0.0, -1.0]), step_size=2.0, min_weight=0.0, max_weight=1.0, smoothing=0.0)
    assert u.tolist() == pytest.approx(np.array([math.e**2, 1.0, math.e**-2]) / (math.e**2 + 1 + math.e**-2))  # .867 .117 .016
    bounded = update_weights(w, torch.tensor([1.0, 0.0, -1.0]), step_size=2.0, min_weight=0.1, max_weight=0.7, smoothing=0.0)
    assert bounded.tolist() == pytest.approx([0.7, 0.2, 0.1])
    assert clamp_to_simplex(torch.tensor([0.6, 0.39, 0.01]), 0.2, 0.5).tolist() == pytest.approx([0.5, 0.3, 0.2])
    # Capping the first weight hands its mass to the free ones, and the second then exceeds the cap too.
    assert clamp_to_simplex(torch.tensor([0.7, 0.25, 0.03, 0.02]), 0.0, 0.3).tolist() == pytest.approx([0.3, 0.3, 0.24, 0.16])
    with pytest.raises(ValueError, match="sum to 1"):
        clamp_to_simplex(w, 0.4, 0.9)


def test_equal_or_zero_scores_leave_the_weights_alone():
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    for s in (torch.zeros(3), torch.full((3,), 4.0)):
        assert update_weights(w, s, step_size=1.0, min_weight=0.05, max_weight=0.9, smoothing=0.5).tolist() == pytest.approx(w.tolist())


# ----------------------------------------------------------------------------- per-example gradients


@pytest.mark.parametrize("kind", ["tied", "untied", "bitnet"])
def test_example_gradients_match_per_example_autograd(kind):
    torch.manual_seed(0)
    model = tiny_llama(tied=kind != "untied")
    if kind == "bitnet":
        convert_to_bitnet(model, BitNetSettings())  # per-token activation quantization keeps rows independent
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(12).repeat(3, 1)
    grads = example_gradients(model, ids, positions)
    assert len(grads) == len(layer_names(model, ["embed", "lm_head"])) == (2 if kind == "untied" else 1)
    weights = [model.get_input_embeddings().weight] + ([model.lm_head.weight] if kind == "untied" else [])
    for row in range(3):
        reference = torch.autograd.grad(row_losses(model, ids[row : row + 1], positions[row : row + 1]).sum(), weights)
        for got, want in zip(grads, reference):
            assert torch.allclose(got[row], want.flatten(), atol=1e-6), (kind, row, (got[row] - want.flatten()).abs().max())
    # lm_head alone is the output-side part of the same gradient.
    (head,) = example_gradients(model, ids, positions, ["lm_head"])
    if kind == "untied":
        assert torch.allclose(head, grads[1])
    assert all(p.grad is None for p in model.parameters()), "scoring must not touch parameter gradients"


def test_mean_gradients_is_the_mean_of_example_gradients():
    model = tiny_llama()
    ids = torch.randint(0, 256, (5, 10), generator=torch.Generator().manual_seed(4))
    (mean,) = mean_gradients(model, [(ids[:2], None), (ids[2:], None)])
    (each,) = example_gradients(model, ids)
    assert torch.allclose(mean, each.mean(0), atol=1e-7)


# ------------------------------------------------------------------------------- a known direction


def counting_rows(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Source A and the probe: runs that count up through tokens 10..41 from a random start."""
    start = torch.randint(0, 32, (n, 1), generator=gen)
    return 10 + (start + torch.arange(length)) % 32


def test_source_aligned_with_the_probe_gains_weight():
    """Probe = source A's distribution, source B = uniform noise over other tokens: A must win."""
    gen = torch.Generator().manual_seed(5)
    model = tiny_llama()
    convert_to_bitnet(model, BitNetSettings())
    probe = counting_rows(8, 16, gen)
    a, b = counting_rows(8, 16, gen), torch.randint(100, 250, (8, 16), generator=gen)
    v = mean_gradients(model, [(probe, None)])
    grads = [torch.cat(pair) for pair in zip(example_gradients(model, a), example_gradients(model, b))]
    scores = source_scores(datainf_scores(grads, v, damping=0.1), torch.tensor([0] * 8 + [1] * 8), 2)
    assert scores[0] > 0 and scores[0] > scores[1], scores
    weights = update_weights(torch.tensor([0.5, 0.5]), scores, step_size=1.0, min_weight=0.05, max_weight=0.95, smoothing=0.5)
    assert weights[0] > 0.5 > weights[1], weights


# ------------------------------------------------------------------------------- scheduled weights


def two_sources(seed: int = 0) -> MixtureSampler:
    data = {"a": np.arange(40 * 4).reshape(40, 4) % 97 + 1, "b": np.arange(30 * 4).reshape(30, 4) % 89 + 200}
    return MixtureSampler(data, {"a": 0.5, "b": 0.5}, eos_token_id=0, seed=seed)


def test_scheduled_weights_apply_at_their_draw_and_survive_a_state_round_trip():
    reference = two_sources()
    reference.sample(8)
    saved = reference.state_dict()  # draws = 1
    reference.sample(8)  # a prefetched batch, drawn with the old weights
    reference.schedule_weights({"a": 0.9, "b": 0.1}, at_draw=reference.draws)
    assert reference.weights["a"] == pytest.approx(0.9), "a draw number already reached applies at once"
    expected = [reference.sample(8)["input_ids"] for _ in range(3)]

    resumed = two_sources()
    resumed.load_state_dict(saved)
    resumed.schedule_weights({"a": 0.9, "b": 0.1}, at_draw=2)
    assert resumed.weights["a"] == pytest.approx(0.5), "the batch before the scheduled draw keeps the old weights"
    resumed.sample(8)
    got = [resumed.sample(8)["input_ids"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(got, expected))
    assert resumed.weights == reference.weights and resumed.draws == reference.draws == 5

    pending = two_sources()
    pending.schedule_weights({"a": 0.2, "b": 0.8}, at_draw=3)
    restored = two_sources()
    restored.load_state_dict(pending.state_dict())
    for _ in range(3):
        restored.sample(2)
    assert restored.weights["a"] == pytest.approx(0.5)
    restored.sample(2)
    assert restored.weights["a"] == pytest.approx(0.2)


def test_latest_weights_are_the_pending_schedule_else_the_current_ones():
    sampler = two_sources()
    assert sampler.latest_weights == sampler.weights == {"a": 0.5, "b": 0.5}
    sampler.schedule_weights({"a": 3.0, "b": 1.0}, at_draw=2)
    assert sampler.weights["a"] == pytest.approx(0.5) and sampler.latest_weights == {"a": 0.75, "b": 0.25}
    for _ in range(3):
        sampler.sample(1)
    assert sampler.weights == pytest.approx(sampler.latest_weights) and sampler.latest_weights["a"] == pytest.approx(0.75)


def test_states_without_a_draw_count_still_load():
    sampler = two_sources()
    state = sampler.state_dict()
    del state["draws"], state["scheduled"]
    two_sources().load_state_dict(state)
