"""LRC adapters: exact no-op at U = 0, SVD init reduces the error, freezing, and bit-exact checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.models.tiny import tiny_model, token_ids
from wrinklefree_core.models.bitlinear import BitLinear, set_quant_lambda
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint, save_bitnet_checkpoint
from wrinklefree_core.models.convert import bitlinear_modules, convert_to_bitnet
from wrinklefree_core.models.lrc import (
    BitLinearLRC,
    add_lrc_adapters,
    freeze_all_but_lrc,
    lrc_modules,
    lrc_parameters,
    lrc_rank,
    lrc_settings_of,
)
from wrinklefree_core.config.bitnet import BitNetSettings, LRCSettings


def bitlinear(in_features=64, out_features=48, bias=True, sub_norm_eps=None, seed=0) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(in_features, out_features, bias=bias, sub_norm_eps=sub_norm_eps)
    if layer.sub_norm is not None:
        with torch.no_grad():
            layer.sub_norm.weight.copy_(1 + 0.3 * torch.randn(in_features))
    return layer


@pytest.mark.parametrize("bias, sub_norm_eps", [(False, None), (True, None), (False, 1e-6)])
def test_zero_U_equals_bitlinear_exactly(bias, sub_norm_eps):
    base = bitlinear(bias=bias, sub_norm_eps=sub_norm_eps)
    x = torch.randn(3, 5, 64)
    expected = base(x)
    lrc = BitLinearLRC.from_bitlinear(base, rank=8, init="zeros")
    assert lrc.lrc_V.abs().sum() > 0 and lrc.lrc_U.abs().sum() == 0
    assert torch.equal(lrc(x), expected)
    # the same tensors, not copies
    assert lrc.weight is base.weight and lrc.sub_norm is base.sub_norm


def test_correction_is_U_Vt_on_the_unquantized_post_subln_input():
    base = bitlinear(sub_norm_eps=1e-6)
    lrc = BitLinearLRC.from_bitlinear(base, rank=4)
    with torch.no_grad():
        lrc.lrc_U.normal_()
    x = torch.randn(2, 64)
    h = base.sub_norm(x)
    expected = base(x) + h @ lrc.lrc_V @ lrc.lrc_U.T
    torch.testing.assert_close(lrc(x), expected, rtol=1e-5, atol=1e-5)


def test_svd_init_lowers_the_error_against_full_precision():
    base = bitlinear(in_features=128, out_features=96, bias=False)
    x = torch.randn(256, 128)
    reference = F.linear(x, base.weight)
    error_without = (base(x) - reference).pow(2).mean().item()
    lrc = BitLinearLRC.from_bitlinear(base, rank=lrc_rank(128, 96, 0.25), init="svd")
    error_with = (lrc(x) - reference).pow(2).mean().item()
    assert error_with < 0.8 * error_without
    # at full rank the weight error is gone; only the int8 activation error remains
    full = BitLinearLRC.from_bitlinear(base, rank=96, init="svd")
    weight_error = base.weight - (full.weight.detach().abs().mean() * torch.round(full.weight / full.weight.abs().mean()).clamp(-1, 1))
    torch.testing.assert_close(full.lrc_U @ full.lrc_V.T, weight_error.detach(), rtol=1e-4, atol=1e-5)


def test_svd_init_aims_at_the_reference_weight_when_given():
    """After GPTQ init the latent is not the teacher: the correction must factor teacher - s*W_q."""
    base = bitlinear(in_features=32, out_features=24, bias=False)
    teacher = torch.nn.Linear(32, 24, bias=False)
    full = BitLinearLRC.from_bitlinear(base, rank=24, init="svd", target=teacher.weight)
    s = base.weight.detach().abs().mean()
    expected = teacher.weight - s * torch.round(base.weight / s).clamp(-1, 1)
    torch.testing.assert_close(full.lrc_U @ full.lrc_V.T, expected.detach(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="svd target has shape"):
        BitLinearLRC.from_bitlinear(bitlinear(in_features=32, out_features=24, bias=False), rank=4, init="svd", target=torch.zeros(3, 3))


def test_add_adapters_takes_each_layer_reference_by_name():
    student = convert_to_bitnet(tiny_model("llama-tied"), BitNetSettings())
    teacher = tiny_model("llama-tied", seed=1)
    add_lrc_adapters(student, 1.0, "svd", reference=teacher)
    for name, module in lrc_modules(student):
        goal = teacher.get_submodule(name).weight
        s = module.weight.detach().abs().mean()
        torch.testing.assert_close(module.lrc_U @ module.lrc_V.T, (goal - s * torch.round(module.weight / s).clamp(-1, 1)).detach(), rtol=1e-3, atol=1e-4)


def test_rank_rounds_up_and_is_stable():
    assert lrc_rank(64, 128, 0.1) == 7  # 6.4 -> 7
    assert lrc_rank(10, 10, 0.3) == 3  # 0.3 * 10 is 3.0000000000000004 in floats
    assert lrc_rank(64, 64, 0.001) == 1
    with pytest.raises(ValueError):
        lrc_rank(8, 8, 0.0)


def converted_with_lrc(arch="llama-tied", init="zeros", rank_fraction=0.25):
    model = convert_to_bitnet(tiny_model(arch), BitNetSettings())
    return add_lrc_adapters(model, rank_fraction, init)


def test_add_adapters_swaps_every_bitlinear_and_keeps_names():
    model = convert_to_bitnet(tiny_model("qwen2"), BitNetSettings())
    before = set(model.state_dict())
    ids = token_ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    n_bitlinear = len(bitlinear_modules(model))
    add_lrc_adapters(model, 0.25)
    after = set(model.state_dict())
    assert before <= after
    assert {k.rsplit(".", 1)[-1] for k in after - before} == {"lrc_U", "lrc_V"}
    assert len(lrc_modules(model)) == n_bitlinear == len(bitlinear_modules(model))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, expected)
    q = model.model.layers[0].self_attn.q_proj
    assert q.lrc_U.shape == (64, 16) and q.lrc_V.shape == (64, 16)
    with pytest.raises(ValueError, match="already has LRC"):
        add_lrc_adapters(model, 0.25)
    with pytest.raises(ValueError, match="no BitLinear"):
        add_lrc_adapters(tiny_model("llama-tied"), 0.25)


def test_adding_adapters_does_not_touch_the_global_rng():
    model = convert_to_bitnet(tiny_model("llama-tied"), BitNetSettings())
    state = torch.get_rng_state()
    add_lrc_adapters(model, 0.25)
    assert torch.equal(torch.get_rng_state(), state)


def test_only_U_and_V_train_after_freeze():
    model = converted_with_lrc()
    trainable = freeze_all_but_lrc(model)
    names = {name.rsplit(".", 1)[-1] for name, p in model.named_parameters() if p.requires_grad}
    assert names == {"lrc_U", "lrc_V"}
    assert len(trainable) == len(lrc_parameters(model)) == 2 * len(lrc_modules(model))
    model(input_ids=token_ids()).logits.float().pow(2).mean().backward()
    # U = 0 at the start, but its gradient is not, so calibration moves from step 0
    assert all(m.lrc_U.grad is not None and m.lrc_U.grad.abs().sum() > 0 for _, m in lrc_modules(model))
    assert model.model.layers[0].self_attn.q_proj.weight.grad is None
    with pytest.raises(ValueError, match="no LRC adapters"):
        freeze_all_but_lrc(tiny_model("llama-tied"))


@pytest.mark.parametrize("arch", ["llama-tied", "qwen3"])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, arch):
    model = converted_with_lrc(arch, init="svd", rank_fraction=0.3)
    with torch.no_grad():  # make every adapter tensor matter
        for _, m in lrc_modules(model):
            m.lrc_U.add_(0.01 * torch.randn_like(m.lrc_U))
    set_quant_lambda(model, 0.75)
    recorded = lrc_settings_of(model)
    assert recorded == LRCSettings(rank_fraction=0.3, init="svd")
    settings = BitNetSettings().model_copy(update={"lrc": recorded})
    path = save_bitnet_checkpoint(model, tmp_path / "ckpt", settings)

    loaded, loaded_settings = load_bitnet_checkpoint(path)
    assert loaded_settings.lrc == recorded
    assert lrc_settings_of(loaded) == recorded
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert set(original) == set(reloaded)
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    ids = token_ids()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_settings_of_a_model_without_adapters_is_none():
    assert lrc_settings_of(convert_to_bitnet(tiny_model("llama-tied"), BitNetSettings())) is None

