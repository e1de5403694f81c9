"""LRC hidden-state MSE: which hidden states are compared, and the mean over layers."""

from __future__ import annotations

import pytest
import torch

from wrinklefree_core.objectives.lrc_loss import hidden_layer_indices, hidden_state_mse


def hidden(values: list[list[float]]) -> tuple[torch.Tensor, ...]:
    """An output_hidden_states-like tuple: one (1, 2, 2) tensor per entry (embeddings first)."""
    return tuple(torch.tensor(v).reshape(1, 2, 2) for v in values)


STUDENT = hidden([[9.0, 9.0, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
TEACHER = hidden([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]])


def test_mean_over_every_layer_by_hand():
    # layer 0 output (entry 1): diffs 0,2,0,2 -> MSE 2; layer 1 (entry 2): -1,-1,0,0 -> MSE 0.5; entry 0 never counts
    assert hidden_state_mse(STUDENT, TEACHER).item() == pytest.approx((2.0 + 0.5) / 2)


def test_chosen_layers_and_negative_indices():
    assert hidden_state_mse(STUDENT, TEACHER, layers=[-1]).item() == pytest.approx(0.5)
    assert hidden_state_mse(STUDENT, TEACHER, layers=[0]).item() == pytest.approx(2.0)
    assert hidden_layer_indices(4, [0, -1]) == [1, 4]
    with pytest.raises(ValueError, match="out of range"):
        hidden_layer_indices(2, [2])


def test_valid_positions_only():
    valid = torch.tensor([[True, False]])
    # position 0 only: layer 0 diffs 0,2 -> 2; layer 1 diffs -1,-1 -> 1
    assert hidden_state_mse(STUDENT, TEACHER, valid=valid).item() == pytest.approx((2.0 + 1.0) / 2)


def test_zero_when_equal_and_teacher_gets_no_gradient():
    student = tuple(h.clone().requires_grad_(True) for h in TEACHER)
    teacher = tuple(h.clone().requires_grad_(True) for h in TEACHER)
    loss = hidden_state_mse(student, teacher)
    assert loss.item() == 0.0
    (hidden_state_mse(tuple(s + 1 for s in student), teacher)).backward()
    assert student[1].grad is not None and teacher[1].grad is None
