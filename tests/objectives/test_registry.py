"""Objectives describe themselves (objectives/base.py), and the manager, the stage naming and the recipe checks read them.

The recipe in docs/architecture.md, done once: a toy objective registered from this test is summed
by the manager with its weight, makes the step run the teacher, names its recipe's stage and
satisfies that stage's check, with no other code changed.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from pydantic import create_model

from wrinklefree_core.config import compose
from wrinklefree_core.config.training import ObjectiveConfig, ObjectivesConfig
from wrinklefree_core.objectives.base import NEEDS, LossInputs, Objective, Requirements, get, register, registry, unregister
from wrinklefree_core.objectives.manager import ObjectiveManager
from wrinklefree_core.stages.base import get as get_stage
from wrinklefree_core.stages.train import stage_name


def test_the_registry_is_the_configs_objectives_in_its_order():
    assert list(registry()) == list(ObjectivesConfig.model_fields) == ["ce", "dlm", "logits_kd", "attention_kd", "lrc"]
    inputs = {f.name for f in fields(LossInputs)}
    for objective in registry().values():
        assert objective.summary and set(objective.reads) <= inputs and objective.needs <= NEEDS, objective.name
    assert {n: o.stage for n, o in registry().items() if o.stage} == {"logits_kd": "distill", "attention_kd": "distill", "lrc": "lrc"}
    with pytest.raises(ValueError, match="unknown objective 'kl'; objectives: ce, dlm"):
        get("kl")
    with pytest.raises(ValueError, match=r"needs \['gpu'\]"):
        Objective(name="bad", summary="-", loss=lambda *a: None, reads=(), needs=frozenset({"gpu"}))


@pytest.mark.parametrize(
    ("recipe", "stage"), [("unified", "train"), ("lrc_calibration", "lrc"), ("bitdistill_full", "distill"), ("stage2_pretrain", "train")]
)
def test_a_recipe_is_named_by_its_objectives_stage_tags(recipe, stage):
    cfg = compose("train", [f"training={recipe}", "checkpoint=x"])
    assert stage_name(cfg) == stage
    assert get_stage(stage).problem(cfg) is None


def test_lrc_wins_over_kd_and_a_stage_refuses_a_recipe_without_its_objective():
    both = compose("train", ["training=bitdistill_full", "training.objectives.lrc.enabled=true", "checkpoint=x"])
    assert stage_name(both) == "lrc"  # the earlier pipeline stage of the two tags
    plain = compose("train", ["training=unified", "checkpoint=x"])
    assert get_stage("distill").problem(plain) == (
        "stage 'distill' needs a recipe with the logits_kd or attention_kd objective (training=bitdistill_full); training=unified has none"
    )


def _toy_loss(inputs: LossInputs, valid, settings) -> torch.Tensor:
    return (inputs.logits - inputs.teacher_logits).abs().mean() * settings.kd.temperature


@pytest.fixture
def toy():
    objective = register(
        Objective(
            name="toy", summary="mean |student - teacher| logits", loss=_toy_loss, reads=("logits", "teacher_logits"),
            needs=frozenset({"teacher"}), stage="distill",
        )  # fmt: skip
    )
    yield objective
    unregister("toy")


def test_a_toy_objective_registered_here_is_summed_needs_its_teacher_and_names_its_stage(toy):
    # The config's one field for it (config/training.py holds one per objective, the bottom layer).
    with_toy = create_model("WithToy", __base__=ObjectivesConfig, toy=(ObjectiveConfig, ObjectiveConfig()))
    objectives = with_toy(ce=ObjectiveConfig(enabled=True, weight=0.5), toy=ObjectiveConfig(enabled=True, weight=2.0))
    cfg = compose("train", ["training=unified", "training.objectives.dlm.enabled=false", "training.kd.temperature=3.0", "checkpoint=x"])
    manager = ObjectiveManager(objectives, kd=cfg.training.kd)
    assert manager.enabled == ("ce", "toy") and manager.requirements == Requirements(True, False, False, False)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (2, 6), generator=gen)
    logits, teacher = torch.randn(2, 6, 11, generator=gen), torch.randn(2, 6, 11, generator=gen)
    out = manager.compute(LossInputs(input_ids=ids, labels=ids, logits=logits, teacher_logits=teacher))
    toy_part = (logits - teacher).abs().mean() * 3.0
    assert torch.allclose(out.parts["toy"], toy_part)
    assert torch.allclose(out.loss, 0.5 * out.parts["ce"] + 2.0 * toy_part)
    with pytest.raises(ValueError, match=r"objective 'toy' is active but LossInputs lacks \['teacher_logits'\]"):
        manager.compute(LossInputs(input_ids=ids, labels=ids, logits=logits))

    run = cfg.model_copy(update={"training": cfg.training.model_copy(update={"objectives": objectives})})
    assert stage_name(run) == "distill" and get_stage("distill").problem(run) is None
