"""Attention-relation KD: hand-computed relations, zero for identical models, Q/K/V capture on GQA models."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.models.tiny import tiny_llama, tiny_qwen3, token_ids
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.objectives.attention_kd import attention_relation_loss, capture_qkv, relation_kl


def relation(a: list[list[float]]) -> list[list[float]]:
    """softmax(A A^T / sqrt(d)) row by row, by hand."""
    d = len(a[0])
    out = []
    for x in a:
        scores = [sum(xi * yi for xi, yi in zip(x, y)) / math.sqrt(d) for y in a]
        exps = [math.exp(s) for s in scores]
        out.append([e / sum(exps) for e in exps])
    return out


def mean_row_kl(p_rows: list[list[float]], q_rows: list[list[float]]) -> float:
    kls = [sum(p * math.log(p / q) for p, q in zip(pr, qr)) for pr, qr in zip(p_rows, q_rows)]
    return sum(kls) / len(kls)


STUDENT = [[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]
TEACHER = [[1.0, 1.0], [0.0, 2.0], [-1.0, 0.5]]


def test_one_relation_head_by_hand():
    expected = mean_row_kl(relation(TEACHER), relation(STUDENT))
    got = relation_kl(torch.tensor([STUDENT]), torch.tensor([TEACHER]), heads=1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_two_relation_heads_by_hand():
    # each column is a head of width 1
    per_head = [
        mean_row_kl(relation([[row[h]] for row in TEACHER]), relation([[row[h]] for row in STUDENT])) for h in range(2)
    ]
    got = relation_kl(torch.tensor([STUDENT]), torch.tensor([TEACHER]), heads=2)
    assert got.item() == pytest.approx(sum(per_head) / 2, rel=1e-5)


def test_loss_is_the_mean_over_q_k_v():
    s, t = torch.tensor([STUDENT]), torch.tensor([TEACHER])
    q_only = attention_relation_loss({"q": s, "k": t, "v": t}, {"q": t, "k": t, "v": t}, relation_heads=1)
    assert q_only.item() == pytest.approx(mean_row_kl(relation(TEACHER), relation(STUDENT)) / 3, rel=1e-5)


def test_padding_is_ignored():
    s = torch.randn(2, 5, 8)
    t = torch.randn(2, 5, 8)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    base = relation_kl(s, t, 2, valid)
    s2, t2 = s.clone(), t.clone()
    s2[1, 3:] = 100 * torch.randn(2, 8)
    t2[1, 3:] = -50 * torch.randn(2, 8)
    assert relation_kl(s2, t2, 2, valid).item() == pytest.approx(base.item(), rel=1e-5)
    # the unpadded part of sequence 1 alone gives the same per-row KL as computing it on the cut sequence
    cut = relation_kl(s[1:, :3], t[1:, :3], 2)
    rows_kl = relation_kl(s[:1], t[:1], 2)
    assert base.item() == pytest.approx((rows_kl.item() * 5 + cut.item() * 3) / 8, rel=1e-5)


def test_fully_padded_sequence_gives_finite_gradients():
    s = torch.randn(2, 4, 8, requires_grad=True)
    valid = torch.tensor([[True, True, True, False], [False, False, False, False]])
    relation_kl(s, torch.randn(2, 4, 8), 2, valid).backward()
    assert torch.isfinite(s.grad).all()


def test_relation_heads_must_divide_width():
    with pytest.raises(ValueError, match="relation_heads=3"):
        relation_kl(torch.randn(1, 4, 8), torch.randn(1, 4, 8), 3)


@pytest.mark.parametrize(
    "build, q_width, kv_width",
    [(tiny_llama, 64, 32), (tiny_qwen3, 128, 64)],  # GQA: 4 query heads, 2 KV heads; Qwen3 head_dim 32
)
def test_capture_shapes_on_gqa_models(build, q_width, kv_width):
    model = build()
    ids = token_ids(batch=2, seq=7)
    with capture_qkv(model, -1) as qkv, torch.no_grad():
        model(input_ids=ids)
    assert qkv["q"].shape == (2, 7, q_width)
    assert qkv["k"].shape == (2, 7, kv_width) and qkv["v"].shape == (2, 7, kv_width)
    # the hooks are gone after the block
    attention = model.model.layers[-1].self_attn
    assert not attention.q_proj._forward_hooks and not attention.v_proj._forward_hooks


def test_capture_picks_the_layer_and_checks_range():
    model = tiny_llama()
    ids = token_ids(batch=1, seq=5)
    with capture_qkv(model, 0) as first, capture_qkv(model, -1) as last, torch.no_grad():
        model(input_ids=ids)
    assert not torch.equal(first["q"], last["q"])
    with pytest.raises(ValueError, match="out of range"):
        with capture_qkv(model, 2):
            pass


def test_zero_for_identical_models_positive_for_ternary_student():
    teacher = tiny_llama()
    twin = copy.deepcopy(teacher)
    student = convert_to_bitnet(copy.deepcopy(teacher), BitNetSettings(subln="none"))
    ids = token_ids(batch=2, seq=9)
    with torch.no_grad(), capture_qkv(teacher, -1) as t_qkv:
        teacher(input_ids=ids)
    with torch.no_grad(), capture_qkv(twin, -1) as twin_qkv:
        twin(input_ids=ids)
    with capture_qkv(student, -1) as s_qkv:
        student(input_ids=ids)
    assert attention_relation_loss(twin_qkv, t_qkv, relation_heads=4).item() == pytest.approx(0.0, abs=1e-7)
    loss = attention_relation_loss(s_qkv, t_qkv, relation_heads=4)
    assert loss.item() > 0
    loss.backward()
    assert student.model.layers[-1].self_attn.q_proj.weight.grad.abs().sum() > 0
