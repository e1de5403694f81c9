"""QK-clip: the measured logits are the real ones, hot heads land on tau, other heads stay untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward, repeat_kv

from tests.models.tiny import tiny_model, token_ids
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.models.lrc import add_lrc_adapters
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.training.qk_clip import QKClip

HEAD_DIM = 16  # tiny Llama/Qwen2: hidden 64 / 4 heads; 2 kv heads -> q heads {0,1} share kv head 0
PROBE = "qk_clip_test_probe"
probed: list[torch.Tensor] = []


def _probe_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention that also records each q head's max pre-softmax logit, straight from HF's tensors."""
    logits = query @ repeat_kv(key, module.num_key_value_groups).transpose(2, 3) * scaling
    blocked = attention_mask <= torch.finfo(attention_mask.dtype).min / 2
    probed.append(logits.masked_fill(blocked, float("-inf")).amax(dim=(0, 2, 3)).detach())
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


AttentionInterface.register(PROBE, _probe_attention)
AttentionMaskInterface.register(PROBE, eager_mask)


def bitnet(arch: str, quant_lambda: float = 0.0) -> torch.nn.Module:
    return convert_to_bitnet(tiny_model(arch), BitNetSettings(quant_lambda=quant_lambda)).train()


@pytest.mark.parametrize("arch", ["llama-untied", "qwen2", "qwen3"])
def test_measured_logits_match_the_attention_logits(arch):
    """RoPE, GQA, Qwen2 biases, Qwen3 QK-norm and a padding mask: the hook sees what softmax sees."""
    model = bitnet(arch, quant_lambda=1.0)
    model.set_attn_implementation(PROBE)
    qk = QKClip(model, tau=100.0)
    ids = token_ids(batch=2, seq=12)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding on the first row
    probed.clear()
    model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(qk.max_logits(), torch.stack(probed), rtol=1e-5, atol=1e-5)
    qk.remove()


@pytest.mark.parametrize("arch", ["llama-untied", "qwen2"])
def test_hot_head_is_clipped_to_tau_and_other_heads_untouched(arch):
    model = bitnet(arch, quant_lambda=0.0)  # full precision: the rescale is exact
    attn0 = model.model.layers[0].self_attn
    with torch.no_grad():
        attn0.q_proj.weight[:HEAD_DIM] *= 60.0  # layer 0, q head 0
        if attn0.q_proj.bias is not None:
            attn0.q_proj.bias[:HEAD_DIM] *= 60.0
    tau = 2.0
    qk = QKClip(model, tau)
    ids = token_ids()
    model(input_ids=ids)
    before = qk.max_logits()
    assert before[0, 0] > tau and (before.flatten()[1:] < tau).all()

    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = qk.apply()
    assert stats == {"heads_clipped": 1.0, "max_logit": pytest.approx(before[0, 0].item())}
    assert torch.isinf(qk.max_logits()).all()  # reset after apply

    # q head 0 and kv head 0 are scaled by sqrt(tau / S) each; everything else is bit-identical.
    factor = (tau / before[0, 0]).sqrt()
    changed = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"}
    if attn0.q_proj.bias is not None:
        changed |= {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias"}
        q_bias = weights["model.layers.0.self_attn.q_proj.bias"]
        torch.testing.assert_close(attn0.q_proj.bias[:HEAD_DIM], q_bias[:HEAD_DIM] * factor)
    for name, p in model.named_parameters():
        if name not in changed:
            assert torch.equal(p, weights[name]), name
    q_old, k_old = weights["model.layers.0.self_attn.q_proj.weight"], weights["model.layers.0.self_attn.k_proj.weight"]
    torch.testing.assert_close(attn0.q_proj.weight[:HEAD_DIM], q_old[:HEAD_DIM] * factor)
    assert torch.equal(attn0.q_proj.weight[HEAD_DIM:], q_old[HEAD_DIM:])
    torch.testing.assert_close(attn0.k_proj.weight[:HEAD_DIM], k_old[:HEAD_DIM] * factor)
    assert torch.equal(attn0.k_proj.weight[HEAD_DIM:], k_old[HEAD_DIM:])

    model(input_ids=ids)
    after = qk.max_logits()
    assert after[0, 0].item() == pytest.approx(tau, rel=1e-4)
    # q head 1 shares kv head 0: its logits shrink by sqrt(eta); heads 2, 3 read kv head 1 and are unchanged.
    assert after[0, 1].item() == pytest.approx(before[0, 1].item() * factor.item(), rel=1e-4)
    assert torch.equal(after[0, 2:], before[0, 2:])
    qk.remove()


def test_lrc_adapter_rows_scale_with_the_head():
    model = add_lrc_adapters(bitnet("llama-untied", quant_lambda=0.0), 0.25)
    attn0 = model.model.layers[0].self_attn
    with torch.no_grad():
        for proj in (attn0.q_proj, attn0.k_proj):
            proj.lrc_U.normal_(std=0.05)
        attn0.q_proj.weight[:HEAD_DIM] *= 60.0
    qk = QKClip(model, 2.0)
    ids = token_ids()
    model(input_ids=ids)
    assert qk.apply()["heads_clipped"] == 1.0
    model(input_ids=ids)
    assert qk.max_logits()[0, 0].item() == pytest.approx(2.0, rel=1e-4)
    qk.remove()


def test_qk_norm_models_clip_per_layer_through_the_norm_weights():
    model = bitnet("qwen3", quant_lambda=0.0)
    attn0 = model.model.layers[0].self_attn
    with torch.no_grad():
        attn0.q_norm.weight.mul_(40.0)  # every head of layer 0 heats up
    tau = 10.0  # QK-normed heads of the tiny Qwen3 already reach ~3
    qk = QKClip(model, tau)
    ids = token_ids()
    model(input_ids=ids)
    before = qk.max_logits()
    assert (before[0] > tau).any() and (before[1] < tau).all()
    q_w, k_w = attn0.q_proj.weight.clone(), attn0.k_proj.weight.clone()
    layer1 = {n: p.clone() for n, p in model.model.layers[1].named_parameters()}
    qk.apply()
    assert all(torch.equal(p, layer1[n]) for n, p in model.model.layers[1].named_parameters())
    assert torch.equal(attn0.q_proj.weight, q_w) and torch.equal(attn0.k_proj.weight, k_w)  # a no-op under QK-norm
    model(input_ids=ids)
    after = qk.max_logits()
    assert after[0].max().item() == pytest.approx(tau, rel=1e-4)
    torch.testing.assert_close(after[0], before[0] * tau / before[0].max(), rtol=1e-4, atol=1e-6)
    qk.remove()


def test_ternary_projections_converge_below_tau_over_steps():
    """At quant_lambda=1 the shared absmean scale makes one rescale approximate; repeated clips close in on tau."""
    model = bitnet("llama-untied", quant_lambda=1.0)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:HEAD_DIM] *= 500.0
    qk = QKClip(model, tau=2.0)
    ids = token_ids()
    seen = []
    for _ in range(4):
        model(input_ids=ids)
        seen.append(qk.max_logits()[0, 0].item())
        qk.apply()
    assert seen[0] > 2.0 and all(b < a for a, b in zip(seen, seen[1:]))
    assert seen[-1] < 2.0 * 1.1
    qk.remove()


def test_eval_forwards_are_not_recorded_and_remove_detaches():
    model = bitnet("llama-untied")
    qk = QKClip(model, 1.0)
    ids = token_ids()
    model.eval()
    model(input_ids=ids)
    assert torch.isinf(qk.max_logits()).all()
    assert qk.apply() == {"heads_clipped": 0.0, "max_logit": pytest.approx(float("nan"), nan_ok=True)}
    model.train()
    qk.remove()
    model(input_ids=ids)
    assert torch.isinf(qk.max_logits()).all()
