"""Masked-diffusion objective: masking statistics, which positions count, and the 1/t weight."""

from __future__ import annotations

import math

import pytest
import torch

from wrinklefree_core.objectives.dlm import dlm_loss, mask_tokens, maskable_positions

MASK_ID = 7


def nll(row: list[float], target: int) -> float:
    return -(row[target] - math.log(sum(math.exp(v) for v in row)))


def test_masked_fraction_tracks_t():
    ids = torch.randint(0, 7, (200, 256), generator=torch.Generator().manual_seed(0))
    noisy, mask, t = mask_tokens(ids, MASK_ID, torch.Generator().manual_seed(1), eps=0.05)
    assert t.shape == (200,) and bool(((t >= 0.05) & (t < 1)).all())
    fraction = mask.float().mean(dim=1)
    # per sequence: binomial(256, t) / 256 has std <= 0.032
    assert (fraction - t).abs().max().item() < 0.15
    assert (fraction - t).abs().mean().item() < 0.03
    # t is spread over (eps, 1), not a constant
    assert t.min().item() < 0.15 and t.max().item() > 0.9
    assert torch.equal(noisy[mask], torch.full_like(noisy[mask], MASK_ID))
    assert torch.equal(noisy[~mask], ids[~mask])


def test_masking_is_reproducible_with_a_generator():
    ids = torch.randint(0, 7, (3, 20))
    a = mask_tokens(ids, MASK_ID, torch.Generator().manual_seed(5))
    b = mask_tokens(ids, MASK_ID, torch.Generator().manual_seed(5))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_maskable_positions_are_respected():
    ids = torch.randint(0, 7, (8, 64))
    labels = ids.clone()
    labels[:, 10] = -100
    attention = torch.ones_like(ids)
    attention[:, 50:] = 0
    maskable = maskable_positions(ids, labels, attention, shift=True)
    assert not maskable[:, 0].any() and not maskable[:, 10].any() and not maskable[:, 50:].any()
    assert maskable[:, 1:10].all() and maskable[:, 11:50].all()
    _, mask, _ = mask_tokens(ids, MASK_ID, torch.Generator().manual_seed(0), eps=0.9, maskable=maskable)
    assert not (mask & ~maskable).any()
    assert maskable_positions(ids)[:, 0].all()


def test_loss_matches_the_llada_estimator_by_hand():
    rows = [
        [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 1.0, 0.0]],
        [[2.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0.3, 0.2, 0.1]],
    ]
    logits = torch.tensor(rows)
    targets = torch.tensor([[0, 2, 1], [1, 1, 0]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    t = torch.tensor([0.5, 0.25])
    # sum over masked positions of CE / t_b, divided by B * L = 6 tokens
    expected = (nll(rows[0][0], 0) / 0.5 + nll(rows[0][2], 1) / 0.5 + nll(rows[1][1], 1) / 0.25) / 6
    assert dlm_loss(logits, targets, mask, t).item() == pytest.approx(expected, rel=1e-6)
    # with a maskable set the normaliser is the number of maskable tokens
    maskable = torch.tensor([[True, True, True], [True, True, False]])
    assert dlm_loss(logits, targets, mask, t, maskable=maskable).item() == pytest.approx(expected * 6 / 5, rel=1e-6)


def test_shifted_loss_reads_the_previous_position():
    rows = [[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 1.0, 0.0]]]
    logits = torch.tensor(rows)
    targets = torch.tensor([[0, 2, 1]])
    mask = torch.tensor([[False, True, True]])
    t = torch.tensor([0.5])
    maskable = torch.tensor([[False, True, True]])
    # x_0[1] = 2 scored at position 0, x_0[2] = 1 at position 1; two maskable tokens
    expected = (nll(rows[0][0], 2) / 0.5 + nll(rows[0][1], 1) / 0.5) / 2
    got = dlm_loss(logits, targets, mask, t, maskable=maskable, shift=True)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_only_masked_positions_contribute():
    logits = torch.randn(2, 5, 9, requires_grad=True)
    targets = torch.randint(0, 9, (2, 5))
    mask = torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[0, 0], mask[0, 1] = True, False
    t = torch.tensor([0.3, 0.8])
    loss = dlm_loss(logits, targets, mask, t)
    loss.backward()
    assert (logits.grad[~mask] == 0).all()
    assert (logits.grad[mask].abs().sum(-1) > 0).all()
    changed = logits.detach().clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    assert dlm_loss(changed, targets, mask, t).item() == pytest.approx(loss.item(), rel=1e-6)


def test_inverse_t_weighting():
    logits = torch.randn(1, 6, 5)
    targets = torch.randint(0, 5, (1, 6))
    mask = torch.tensor([[True, False, True, True, False, False]])
    at_half = dlm_loss(logits, targets, mask, torch.tensor([0.5]))
    at_quarter = dlm_loss(logits, targets, mask, torch.tensor([0.25]))
    assert at_quarter.item() == pytest.approx(2 * at_half.item(), rel=1e-6)


def test_nothing_masked_is_zero():
    logits = torch.randn(2, 4, 5)
    targets = torch.randint(0, 5, (2, 4))
    mask = torch.zeros(2, 4, dtype=torch.bool)
    assert dlm_loss(logits, targets, mask, torch.tensor([0.5, 0.5])).item() == 0.0


def test_eps_must_be_in_range():
    with pytest.raises(ValueError, match="eps"):
        mask_tokens(torch.zeros(1, 3, dtype=torch.long), MASK_ID, eps=0.0)
