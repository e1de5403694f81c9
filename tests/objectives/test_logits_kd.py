"""Logits KD: hand-computed KL(teacher || student) with temperature, zero for identical logits."""

from __future__ import annotations

import math

import pytest
import torch

from wrinklefree_core.objectives.logits_kd import logits_kd_loss


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


STUDENT = [[1.0, 0.0, -1.0], [0.2, 0.4, 0.1]]
TEACHER = [[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_matches_hand_formula(temperature):
    expected = sum(kl(softmax(t, temperature), softmax(s, temperature)) for s, t in zip(STUDENT, TEACHER)) / 2
    expected *= temperature**2
    got = logits_kd_loss(torch.tensor([STUDENT]), torch.tensor([TEACHER]), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_direction_is_teacher_to_student():
    forward = logits_kd_loss(torch.tensor([STUDENT]), torch.tensor([TEACHER]))
    reverse = logits_kd_loss(torch.tensor([TEACHER]), torch.tensor([STUDENT]))
    expected = sum(kl(softmax(t, 1.0), softmax(s, 1.0)) for s, t in zip(STUDENT, TEACHER)) / 2
    assert forward.item() == pytest.approx(expected, rel=1e-5)
    assert reverse.item() != pytest.approx(forward.item(), rel=1e-3)


def test_zero_for_identical_and_positive_otherwise():
    logits = torch.randn(2, 5, 17)
    assert logits_kd_loss(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert logits_kd_loss(logits, logits + 0.5 * torch.randn_like(logits), 2.0).item() > 0
    # a constant shift of the logits does not change the distribution
    assert logits_kd_loss(logits, logits + 3.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_valid_positions_only():
    student = torch.tensor([STUDENT])
    teacher = torch.tensor([TEACHER])
    valid = torch.tensor([[True, False]])
    expected = kl(softmax(TEACHER[0], 1.0), softmax(STUDENT[0], 1.0))
    assert logits_kd_loss(student, teacher, 1.0, valid).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_reaches_student_only():
    student = torch.randn(1, 3, 5, requires_grad=True)
    teacher = torch.randn(1, 3, 5, requires_grad=True)
    logits_kd_loss(student, teacher, 2.0).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_vocab_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same vocabulary"):
        logits_kd_loss(torch.randn(1, 2, 5), torch.randn(1, 2, 6))
