"""ObjectiveManager: totals are weighted sums of the parts, disabled or zero-weight terms are skipped,
and the requirements tell the training loop what to compute."""

from __future__ import annotations

import pytest
import torch

from tests.models.tiny import tiny_llama, token_ids
from wrinklefree_core.config import compose
from wrinklefree_core.config.training import (
    CurriculumConfig,
    CurriculumPhase,
    DLMConfig,
    ObjectiveConfig,
    ObjectivesConfig,
    TrainingConfig,
)
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.objectives import capture_qkv
from wrinklefree_core.objectives.ce import cross_entropy_loss
from wrinklefree_core.objectives.dlm import dlm_loss
from wrinklefree_core.objectives.logits_kd import logits_kd_loss
from wrinklefree_core.objectives.manager import LossInputs, ObjectiveManager, Requirements

MASK_ID = 3


def objectives(**weights: float) -> ObjectivesConfig:
    """Enable exactly the named objectives with the given weights."""
    fields = {name: ObjectiveConfig(enabled=name in weights, weight=weights.get(name, 1.0)) for name in ObjectivesConfig.model_fields}
    return ObjectivesConfig(**fields)


def random_inputs(batch: int = 2, seq: int = 6, vocab: int = 11) -> LossInputs:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.rand(batch, seq, generator=gen) < 0.5
    return LossInputs(
        input_ids=ids,
        logits=torch.randn(batch, seq, vocab, generator=gen, requires_grad=True),
        teacher_logits=torch.randn(batch, seq, vocab, generator=gen),
        dlm_logits=torch.randn(batch, seq, vocab, generator=gen, requires_grad=True),
        dlm_mask=mask,
        dlm_t=torch.tensor([0.4, 0.9]),
    )


def test_total_is_the_weighted_sum_of_parts():
    manager = ObjectiveManager(objectives(ce=1.0, dlm=0.5, logits_kd=10.0), mask_token_id=MASK_ID)
    inputs = random_inputs()
    out = manager.compute(inputs)
    ce = cross_entropy_loss(inputs.logits, inputs.input_ids)
    dlm = dlm_loss(inputs.dlm_logits, inputs.input_ids, inputs.dlm_mask, inputs.dlm_t)
    kd = logits_kd_loss(inputs.logits, inputs.teacher_logits)
    assert out.parts["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out.parts["dlm"].item() == pytest.approx(dlm.item(), rel=1e-6)
    assert out.parts["logits_kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert out.weighted["logits_kd"].item() == pytest.approx(10.0 * kd.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(ce.item() + 0.5 * dlm.item() + 10.0 * kd.item(), rel=1e-6)
    out.loss.backward()
    assert inputs.logits.grad is not None and inputs.dlm_logits.grad is not None
    logged = out.log_dict()
    assert set(logged) >= {"train/loss", "train/ce", "train/dlm_weighted", "weight/logits_kd"}


def test_disabled_objectives_are_never_computed():
    manager = ObjectiveManager(objectives(ce=1.0))
    inputs = LossInputs(input_ids=torch.randint(0, 5, (1, 4)), logits=torch.randn(1, 4, 5))
    out = manager.compute(inputs)  # no teacher, no DLM inputs: they are not needed
    assert set(out.parts) == {"ce"} and set(out.weights) == {"ce"}
    assert out.loss.item() == pytest.approx(out.parts["ce"].item())


def test_zero_weight_at_a_step_skips_the_term():
    training = TrainingConfig(
        objectives=objectives(ce=1.0, dlm=0.5),
        curriculum=CurriculumConfig(
            interpolation="step",
            phases=[CurriculumPhase(until=0.5, weights={"dlm": 0.0}), CurriculumPhase(until=1.0, weights={"dlm": 0.5})],
        ),
        max_steps=10,
    )
    manager = ObjectiveManager.from_config(training, mask_token_id=MASK_ID)
    assert manager.needs_dlm_forward  # some step needs it
    assert not manager.needs_at(2, 10).dlm_forward and manager.needs_at(8, 10).dlm_forward
    inputs = random_inputs()
    early = manager.compute(LossInputs(input_ids=inputs.input_ids, logits=inputs.logits), step=2, max_steps=10)
    assert set(early.parts) == {"ce"} and early.weights == {"ce": 1.0, "dlm": 0.0}
    late = manager.compute(inputs, step=8, max_steps=10)
    assert set(late.parts) == {"ce", "dlm"}


def test_requirements_of_each_recipe():
    expected = {
        "unified": Requirements(teacher=False, hidden_states=False, qkv=False, dlm_forward=True),
        "bitdistill_full": Requirements(teacher=True, hidden_states=False, qkv=True, dlm_forward=False),
        "lrc_calibration": Requirements(teacher=True, hidden_states=True, qkv=False, dlm_forward=False),
        "stage2_pretrain": Requirements(teacher=False, hidden_states=False, qkv=False, dlm_forward=False),
    }
    for recipe, requirements in expected.items():
        manager = ObjectiveManager.from_config(compose("train", [f"training={recipe}"]).training, mask_token_id=MASK_ID)
        assert manager.requirements == requirements, recipe
        assert (manager.needs_teacher, manager.needs_hidden_states, manager.needs_qkv, manager.needs_dlm_forward) == (
            requirements.teacher,
            requirements.hidden_states,
            requirements.qkv,
            requirements.dlm_forward,
        )


def test_missing_inputs_and_mask_token_are_reported():
    manager = ObjectiveManager(objectives(ce=1.0, logits_kd=1.0))
    with pytest.raises(ValueError, match="logits_kd.*teacher_logits"):
        manager.compute(LossInputs(input_ids=torch.zeros(1, 3, dtype=torch.long), logits=torch.randn(1, 3, 4)))
    with pytest.raises(ValueError, match="mask_token_id"):
        ObjectiveManager(objectives(dlm=1.0))
    with pytest.raises(ValueError, match="no objective is enabled"):
        ObjectiveManager(objectives())
    configured = ObjectiveManager(objectives(dlm=1.0), dlm=DLMConfig(mask_token_id=9), mask_token_id=MASK_ID)
    assert configured.mask_token_id == 9


def test_padding_is_excluded_from_ce():
    manager = ObjectiveManager(objectives(ce=1.0))
    ids = torch.randint(0, 5, (1, 5))
    logits = torch.randn(1, 5, 5)
    attention = torch.tensor([[1, 1, 1, 0, 0]])
    out = manager.compute(LossInputs(input_ids=ids, logits=logits, attention_mask=attention))
    assert out.parts["ce"].item() == pytest.approx(cross_entropy_loss(logits[:, :3], ids[:, :3]).item(), rel=1e-6)


def test_unified_step_on_a_tiny_model():
    """The loop the manager is built for: a clean forward, a masked forward, one backward."""
    training = compose("train", ["training=unified"]).training
    manager = ObjectiveManager.from_config(training, mask_token_id=MASK_ID)
    model = convert_to_bitnet(tiny_llama(), BitNetSettings())
    ids = token_ids(batch=2, seq=10)
    step = training.max_steps
    assert manager.needs_at(step, training.max_steps).dlm_forward
    noisy, mask, t, maskable = manager.dlm_inputs(ids, generator=torch.Generator().manual_seed(0))
    assert bool((noisy[mask] == MASK_ID).all()) and t.shape == (2,)
    inputs = LossInputs(
        input_ids=ids,
        logits=model(input_ids=ids).logits,
        dlm_logits=model(input_ids=noisy).logits,
        dlm_mask=mask,
        dlm_t=t,
        dlm_maskable=maskable,
    )
    out = manager.compute(inputs, step, training.max_steps)
    assert set(out.parts) == {"ce", "dlm"} and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_distill_step_with_captured_qkv():
    training = compose("train", ["training=bitdistill_full", "training.kd.relation_heads=4"]).training
    manager = ObjectiveManager.from_config(training)
    teacher = tiny_llama()
    student = convert_to_bitnet(tiny_llama(), BitNetSettings())
    ids = token_ids(batch=2, seq=8)
    layer = training.kd.attention_layer
    with torch.no_grad(), capture_qkv(teacher, layer) as t_qkv:
        t_logits = teacher(input_ids=ids).logits
    with capture_qkv(student, layer) as s_qkv:
        s_logits = student(input_ids=ids).logits
    out = manager.compute(LossInputs(input_ids=ids, logits=s_logits, teacher_logits=t_logits, qkv=s_qkv, teacher_qkv=t_qkv))
    assert set(out.parts) == {"ce", "logits_kd", "attention_kd"}
    assert all(v.item() > 0 for v in out.parts.values())
