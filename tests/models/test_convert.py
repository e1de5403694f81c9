"""Conversion tests: HF causal LM -> BitNet, for every supported architecture.

The key checks:
- quant_lambda=0 without SubLN is the HF model, bit for bit;
- quant_lambda=1 with SubLN equals an independent functional forward written below from the state
  dict alone (it imports nothing from wrinklefree_core.quant), so the quantization numbers, SubLN
  placement, biases, QK-norm, RoPE and GQA are all pinned by code that does not share the model's;
- only the attention/MLP projections change, and unsupported models are refused untouched.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MixtralConfig

from tests.models.tiny import ARCHS, build, llama_config, tiny_model, token_ids
from wrinklefree_core.models.architectures import (
    SUPPORTED_ARCHITECTURES,
    UnsupportedArchitectureError,
    architecture_of,
)
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.convert import bitlinear_modules, convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings

PROJECTIONS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


# ------------------------------------------------------------------------------ independent reference


def ref_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, fp32 statistics (the HF/Llama definition)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def ref_ternary_weight(w: torch.Tensor) -> torch.Tensor:
    """s * clamp(round(W / s), -1, 1) with s = clamp(mean|W|, 1e-5)."""
    s = w.abs().mean().clamp(min=1e-5)
    return s * torch.clamp(torch.round(w / s), -1, 1)


def ref_int8_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 fake quantization: x_q / s with s = 127 / clamp(max|x|, 1e-5)."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return torch.clamp(torch.round(x * s), -128, 127) / s


def ref_linear(sd: dict, prefix: str, x: torch.Tensor, quantized: bool, subln_eps: float) -> torch.Tensor:
    """One projection: optional SubLN, then ternary/int8 matmul if quantized, then the fp bias."""
    if f"{prefix}.sub_norm.weight" in sd:
        x = ref_rms_norm(x, sd[f"{prefix}.sub_norm.weight"], subln_eps)
    w = sd[f"{prefix}.weight"]
    if quantized:
        x, w = ref_int8_activation(x), ref_ternary_weight(w)
    return F.linear(x, w, sd.get(f"{prefix}.bias"))


def ref_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """NEOX/HF rotate_half RoPE on (batch, heads, seq, head_dim), positions 0..seq-1."""
    dim, seq = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = torch.arange(seq, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def rope_theta(config) -> float:
    # transformers 5 moved rope_theta into config.rope_parameters; older versions kept config.rope_theta.
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def reference_forward(sd: dict, config, ids: torch.Tensor, quantized: set[str], subln_eps: float) -> torch.Tensor:
    """Logits of a Llama/Qwen2/Qwen3 decoder computed from a state dict with plain torch ops.

    `quantized` names the projections (e.g. "model.layers.0.self_attn.q_proj") run ternary/int8.
    SubLN is applied wherever the state dict has a `<proj>.sub_norm.weight`.
    """
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    eps, theta = config.rms_norm_eps, rope_theta(config)
    batch, seq = ids.shape
    causal = torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1)

    x = sd["model.embed_tokens.weight"][ids]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"

        def proj(name: str, inp: torch.Tensor) -> torch.Tensor:
            return ref_linear(sd, f"{p}.{name}", inp, f"{p}.{name}" in quantized, subln_eps)

        h = ref_rms_norm(x, sd[f"{p}.input_layernorm.weight"], eps)
        q = proj("self_attn.q_proj", h).view(batch, seq, n_heads, head_dim)
        k = proj("self_attn.k_proj", h).view(batch, seq, n_kv, head_dim)
        v = proj("self_attn.v_proj", h).view(batch, seq, n_kv, head_dim)
        if f"{p}.self_attn.q_norm.weight" in sd:  # Qwen3 QK-norm: per head, before RoPE
            q = ref_rms_norm(q, sd[f"{p}.self_attn.q_norm.weight"], eps)
            k = ref_rms_norm(k, sd[f"{p}.self_attn.k_norm.weight"], eps)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = ref_rope(q, theta), ref_rope(k, theta)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)  # GQA: query head j reads KV head j // group
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = q @ k.transpose(-1, -2) / head_dim**0.5 + causal
        attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, n_heads * head_dim)
        x = x + proj("self_attn.o_proj", attn)

        h = ref_rms_norm(x, sd[f"{p}.post_attention_layernorm.weight"], eps)
        x = x + proj("mlp.down_proj", F.silu(proj("mlp.gate_proj", h)) * proj("mlp.up_proj", h))

    x = ref_rms_norm(x, sd["model.norm.weight"], eps)
    return x @ sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).T


# ---------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def randomize_sub_norms(model: nn.Module, seed: int = 3) -> None:
    """SubLN starts at ones; random weights make a wrong placement visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in bitlinear_modules(model):
            if m.sub_norm is not None:
                m.sub_norm.weight.copy_(1.0 + 0.3 * torch.randn(m.sub_norm.weight.shape, generator=gen))


def all_projection_names(n_layers: int = 2) -> set[str]:
    return {f"model.layers.{i}.{p}" for i in range(n_layers) for p in PROJECTIONS}


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("arch", ARCHS)
def test_lambda0_without_subln_is_bit_identical_to_hf(arch):
    model = tiny_model(arch)
    ids = token_ids()
    expected = logits_of(model, ids)
    convert_to_bitnet(model, BitNetSettings(subln="none", quant_lambda=0.0))
    assert len(bitlinear_modules(model)) == 14
    # lam=0 makes BitLinear compute x + 0 and W + 0, which is exact, so equality is exact too.
    assert torch.equal(logits_of(model, ids), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_forward_matches_hf_full_precision(arch):
    """Checks the reference itself (RoPE, GQA, QK-norm, biases, tying) before it judges quantization."""
    model = tiny_model(arch)
    ids = token_ids()
    ref = reference_forward(model.state_dict(), model.config, ids, quantized=set(), subln_eps=0.0)
    # Same math, different op grouping (e.g. the causal mask, RoPE table): float rounding only.
    torch.testing.assert_close(ref, logits_of(model, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("subln", ["bitdistill", "all"])
def test_lambda1_matches_independent_quantized_reference(arch, subln):
    model = tiny_model(arch)
    convert_to_bitnet(model, BitNetSettings(subln=subln, quant_lambda=1.0, subln_eps=1e-5))
    randomize_sub_norms(model)
    ids = token_ids()
    names = {name for name, _ in bitlinear_modules(model)}
    ref = reference_forward(model.state_dict(), model.config, ids, quantized=names, subln_eps=1e-5)
    got = logits_of(model, ids)
    # Tolerance: the model computes the STE form x + (Q(x) - x), which can differ from Q(x) in the
    # last bit, and groups a few ops differently. Measured max difference is ~3e-7 on logits of
    # magnitude ~0.6; 1e-4 leaves headroom for that rounding, while a wrong scale, rounding rule or
    # SubLN placement moves logits by >= 1e-2. A single activation landing on the other side of an
    # int8 rounding boundary would show up as ~1e-3 and fail: then look at op order, not tolerance.
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    # The quantized model really differs from the full-precision one (the test is not vacuous).
    fp = reference_forward(model.state_dict(), model.config, ids, quantized=set(), subln_eps=1e-5)
    assert (got - fp).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_only_projections_become_bitlinear(arch):
    model = tiny_model(arch)
    tied = model.config.tie_word_embeddings
    convert_to_bitnet(model, BitNetSettings(quant_lambda=0.25))
    names = {name for name, _ in bitlinear_modules(model)}
    assert names == all_projection_names()
    for name, module in bitlinear_modules(model):
        has_subln = name.endswith(("o_proj", "down_proj"))
        assert (module.sub_norm is not None) == has_subln, name
        assert module.quant_lambda.item() == 0.25
        if has_subln:
            assert module.sub_norm.eps == model.config.rms_norm_eps
    assert type(model.model.embed_tokens) is nn.Embedding
    assert type(model.lm_head) is nn.Linear
    for name, module in model.named_modules():
        if "norm" in name.rsplit(".", 1)[-1] and not name.endswith("sub_norm"):
            assert not isinstance(module, (BitLinear, nn.Linear)), name
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        assert model.lm_head.weight is not model.model.embed_tokens.weight
    if arch == "qwen3":
        attn = model.model.layers[0].self_attn
        assert type(attn.q_norm).__name__ == "Qwen3RMSNorm" and type(attn.k_norm).__name__ == "Qwen3RMSNorm"


def test_qwen2_biases_are_kept_and_shared():
    model = tiny_model("qwen2")
    attn = model.model.layers[0].self_attn
    q_bias, q_weight = attn.q_proj.bias, attn.q_proj.weight
    convert_to_bitnet(model, BitNetSettings())
    assert isinstance(attn.q_proj, BitLinear)
    assert attn.q_proj.bias is q_bias and attn.q_proj.weight is q_weight
    assert attn.o_proj.bias is None
    assert q_bias.abs().sum() > 0


def test_skip_layers_and_target_modules():
    model = tiny_model("llama-tied")
    convert_to_bitnet(model, BitNetSettings(skip_layers=[1], target_modules=["q_proj", "down_proj"]))
    names = {name for name, _ in bitlinear_modules(model)}
    assert names == {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"}
    layer1 = model.model.layers[1]
    for p in PROJECTIONS:
        assert type(layer1.get_submodule(p)) is nn.Linear, p
    assert type(model.model.layers[0].self_attn.k_proj) is nn.Linear


def test_subln_none_and_explicit_eps():
    model = tiny_model("qwen3")
    convert_to_bitnet(model, BitNetSettings(subln="none"))
    assert all(m.sub_norm is None for _, m in bitlinear_modules(model))
    model = tiny_model("qwen3")
    convert_to_bitnet(model, BitNetSettings(subln="all", subln_eps=1e-3))
    assert all(m.sub_norm is not None and m.sub_norm.eps == 1e-3 for _, m in bitlinear_modules(model))


def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: type(m) for n, m in model.named_modules()}


def _assert_untouched(model: nn.Module, snapshot: tuple[dict, dict]) -> None:
    state, types = snapshot
    assert {n: type(m) for n, m in model.named_modules()} == types
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


UNSUPPORTED = {
    "gpt2": lambda: build(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
    "mixtral": lambda: build(
        MixtralConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        )
    ),
    "llama-base-model": lambda: AutoModelForCausalLM.from_config(llama_config()).model,
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_architecture_is_refused_untouched(name):
    model = UNSUPPORTED[name]()
    snapshot = _snapshot(model)
    with pytest.raises(UnsupportedArchitectureError) as info:
        convert_to_bitnet(model, BitNetSettings())
    message = str(info.value)
    assert type(model).__name__ in message
    for spec in SUPPORTED_ARCHITECTURES.values():
        assert spec.hf_class in message
    assert isinstance(info.value, ValueError)
    _assert_untouched(model, snapshot)


@pytest.mark.parametrize(
    "settings, match",
    [
        (BitNetSettings(target_modules=["q_proj", "lm_head"]), "unknown projection"),
        (BitNetSettings(skip_layers=[5]), "out of range"),
    ],
)
def test_bad_settings_are_refused_untouched(settings, match):
    model = tiny_model("llama-untied")
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        convert_to_bitnet(model, settings)
    _assert_untouched(model, snapshot)


def test_converting_twice_is_refused():
    model = convert_to_bitnet(tiny_model("qwen2"), BitNetSettings())
    with pytest.raises(ValueError, match="already a BitLinear"):
        convert_to_bitnet(model, BitNetSettings())


def test_architecture_entries():
    assert architecture_of(tiny_model("llama-tied")).gguf_arch == "llama"
    qwen2 = architecture_of(tiny_model("qwen2").config)
    assert (qwen2.gguf_arch, qwen2.qkv_bias, qwen2.o_bias, qwen2.qk_norm) == ("qwen2", True, False, False)
    qwen3 = architecture_of(tiny_model("qwen3"))
    assert (qwen3.gguf_arch, qwen3.qkv_bias, qwen3.qk_norm) == ("qwen3", False, True)
    biased = architecture_of(LlamaConfig(attention_bias=True, mlp_bias=True))
    assert biased.qkv_bias and biased.o_bias and biased.mlp_bias
    assert not architecture_of(LlamaConfig()).qkv_bias


def test_llama_with_biases_converts_exactly():
    model = build(LlamaConfig(**{**llama_config().to_dict(), "attention_bias": True, "mlp_bias": True}))
    ids = token_ids()
    expected = logits_of(model, ids)
    convert_to_bitnet(model, BitNetSettings(subln="none", quant_lambda=0.0))
    assert model.model.layers[0].mlp.down_proj.bias is not None
    assert torch.equal(logits_of(model, ids), expected)


def test_sliding_window_and_foreign_class_configs_are_refused():
    from transformers import Qwen2Config

    with pytest.raises(UnsupportedArchitectureError, match="sliding-window"):
        architecture_of(Qwen2Config(use_sliding_window=True, max_window_layers=0))
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForSequenceClassification"):
        architecture_of(LlamaConfig(architectures=["LlamaForSequenceClassification"]))


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0}, {"rope_type": "longrope", "factor": 2.0, "short_factor": [1.0] * 32, "long_factor": [1.0] * 32, "original_max_position_embeddings": 1024}])
def test_rope_variants_without_a_llama_cpp_counterpart_are_refused_naming_them(rope):
    config = LlamaConfig(rope_parameters={**rope, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedArchitectureError, match=f"RoPE scaling \\('{rope['rope_type']}'.*carried: linear, yarn, llama3"):
        architecture_of(config)
    for carried in ({"rope_type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}):
        assert architecture_of(LlamaConfig(rope_parameters={**carried, "rope_theta": 10000.0})).hf_class == "LlamaForCausalLM"


def test_llama3_rope_with_subln_is_refused_by_the_convert_command_before_any_output(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    from wrinklefree_core.config import compose
    from wrinklefree_core.models.sources import materialize

    source = tmp_path / "scaled"
    shutil.copytree(materialize(compose("convert", ["model=tiny_llama"]).model), source)
    config = json.loads((source / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 256, "rope_theta": 10000.0}
    config.pop("rope_scaling", None)
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "wrinklefree_core.cli", "convert", f"model={source}", f"out={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "llama3 RoPE scaling needs per-frequency factors" in proc.stderr and "subln=none" in proc.stderr, proc.stderr
    assert not out.exists()
