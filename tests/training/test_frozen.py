"""`training.frozen`: parameters matching its patterns stay frozen; a pattern matching nothing is refused."""

import pytest

from tests.models.tiny import tiny_llama
from wrinklefree_core.config import compose
from wrinklefree_core.config.compose import ConfigError
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.training.inputs import Student, prepare_trainable, trainable_count


def _student(tied: bool = True) -> Student:
    model = convert_to_bitnet(tiny_llama(tied=tied), BitNetSettings())
    return Student(model, None, BitNetSettings())


def _training(*overrides: str):
    return compose("train", ["model=tiny_llama", "training=unified", *overrides]).training


def test_tied_embedding_pattern_freezes_the_embedding_and_the_head():
    student = prepare_trainable(_student(tied=True), _training("training.frozen=[model.embed_tokens.weight]"), seed=0)
    model = student.model
    assert not model.model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad
    trainable, total = trainable_count(model)
    assert total - trainable == model.model.embed_tokens.weight.numel()
    assert all(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" not in n)


def test_glob_patterns_freeze_every_match():
    student = prepare_trainable(_student(tied=False), _training("training.frozen=['*norm.weight', lm_head.*]"), seed=0)
    frozen = sorted(n for n, p in student.model.named_parameters() if not p.requires_grad)
    assert "lm_head.weight" in frozen
    assert "model.norm.weight" in frozen and "model.layers.0.self_attn.o_proj.sub_norm.weight" in frozen
    assert not any(n.endswith("proj.weight") for n in frozen)


def test_a_pattern_that_matches_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"'model.embedings.\*' matches no parameter"):
        prepare_trainable(_student(), _training("training.frozen=['model.embedings.*']"), seed=0)
