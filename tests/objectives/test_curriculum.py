"""Curriculum weights at chosen steps for each interpolation."""

from __future__ import annotations

import math

import pytest

from wrinklefree_core.config import compose
from wrinklefree_core.config.training import CurriculumPhase
from wrinklefree_core.objectives.curriculum import Curriculum

BASE = {"ce": 1.0, "dlm": 0.3, "lrc": 2.0}
PHASES = [
    CurriculumPhase(until=0.2, weights={"ce": 1.0, "dlm": 0.0}),
    CurriculumPhase(until=0.6, weights={"ce": 0.5, "dlm": 1.0}),
    CurriculumPhase(until=0.8, weights={"ce": 0.5, "dlm": 0.5}),
]


def curriculum(interpolation: str, disabled=("lrc",)) -> Curriculum:
    return Curriculum(PHASES, interpolation, BASE, disabled)


@pytest.mark.parametrize("interpolation", ["step", "linear", "cosine"])
def test_first_phase_is_constant_and_last_phase_holds(interpolation):
    c = curriculum(interpolation)
    for step in (0, 10, 20):
        assert c.weights_at(step, 100) == {"ce": 1.0, "dlm": 0.0, "lrc": 0.0}
    for step in (80, 90, 100, 150):
        assert c.weights_at(step, 100) == {"ce": 0.5, "dlm": 0.5, "lrc": 0.0}


def test_step_holds_each_phase():
    c = curriculum("step")
    assert c.weights_at(21, 100)["dlm"] == 1.0
    assert c.weights_at(60, 100) == {"ce": 0.5, "dlm": 1.0, "lrc": 0.0}
    assert c.weights_at(61, 100)["dlm"] == 0.5


def test_linear_ramps_across_the_phase():
    c = curriculum("linear")
    # progress 0.4 is half way through phase 1 (0.2 -> 0.6)
    assert c.weights_at(40, 100)["ce"] == pytest.approx(0.75)
    assert c.weights_at(40, 100)["dlm"] == pytest.approx(0.5)
    # progress 0.3: a quarter of the way
    assert c.weights_at(30, 100)["dlm"] == pytest.approx(0.25)
    # progress 0.7: half way from phase 1 to phase 2
    assert c.weights_at(70, 100)["dlm"] == pytest.approx(0.75)
    assert c.weights_at(60, 100)["dlm"] == pytest.approx(1.0)


def test_cosine_ramps_gently():
    c = curriculum("cosine")
    quarter = (1 - math.cos(math.pi * 0.25)) / 2
    assert c.weights_at(30, 100)["dlm"] == pytest.approx(quarter)
    assert c.weights_at(30, 100)["ce"] == pytest.approx(1.0 - 0.5 * quarter)
    assert c.weights_at(40, 100)["dlm"] == pytest.approx(0.5)
    assert c.weights_at(60, 100)["dlm"] == pytest.approx(1.0)


def test_unnamed_objectives_keep_their_base_weight_and_disabled_are_zero():
    c = curriculum("linear", disabled=())
    assert c.weights_at(50, 100)["lrc"] == 2.0
    assert curriculum("linear").weights_at(50, 100)["lrc"] == 0.0
    with_disabled_dlm = Curriculum(PHASES, "linear", BASE, ["dlm"])
    assert with_disabled_dlm.weights_at(40, 100)["dlm"] == 0.0


def test_no_phases_means_constant_base_weights():
    c = Curriculum([], "linear", BASE, ["lrc"])
    assert c.weights_at(0, 10) == c.weights_at(10, 10) == {"ce": 1.0, "dlm": 0.3, "lrc": 0.0}


def test_bad_curricula_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        Curriculum(list(reversed(PHASES)), "linear", BASE)
    with pytest.raises(ValueError, match="unknown objectives"):
        Curriculum([CurriculumPhase(until=1.0, weights={"ce": 1.0})], "linear", {"dlm": 1.0})
    with pytest.raises(ValueError, match="interpolation"):
        Curriculum(PHASES, "quadratic", BASE)


def test_unified_recipe_starts_ce_only_then_adds_dlm():
    training = compose("train", ["training=unified"]).training
    c = Curriculum.from_config(training)
    steps = training.max_steps
    assert c.weights_at(0, steps)["dlm"] == 0.0 and c.weights_at(0, steps)["ce"] == 1.0
    assert 0.0 < c.weights_at(steps * 35 // 100, steps)["dlm"] < 0.5
    assert c.weights_at(steps, steps)["dlm"] == pytest.approx(training.objectives.dlm.weight)
    assert c.weights_at(steps, steps)["logits_kd"] == 0.0
