"""Next-token cross entropy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from wrinklefree_core.objectives.ce import cross_entropy_loss


def nll(row: list[float], target: int) -> float:
    """-log softmax(row)[target], by hand."""
    return -(row[target] - math.log(sum(math.exp(v) for v in row)))


def test_shifted_mean_over_targets():
    rows = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]
    logits = torch.tensor([rows])
    labels = torch.tensor([[0, 2, 1]])
    # position 0 predicts labels[1] = 2, position 1 predicts labels[2] = 1; the last position predicts nothing
    expected = (nll(rows[0], 2) + nll(rows[1], 1)) / 2
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_ignored_targets_do_not_count():
    rows = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 0.0, 1.0]]
    logits = torch.tensor([rows])
    labels = torch.tensor([[0, -100, 1]])
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(nll(rows[1], 1), rel=1e-6)


def test_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 4, 5)
    labels = torch.full((2, 4), -100)
    assert cross_entropy_loss(logits, labels).item() == 0.0


def test_bf16_logits_are_scored_in_fp32():
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    loss = cross_entropy_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(cross_entropy_loss(logits.bfloat16().float(), labels).item(), rel=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy_loss(torch.randn(1, 3, 4), torch.zeros(1, 4, dtype=torch.long))
