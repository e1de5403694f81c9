"""Stock-transformers export tests: the folder loads in plain transformers and computes our numbers.

Design choices:
- Each export is loaded with nothing but `AutoModelForCausalLM.from_pretrained(folder)` and compared
  with our checkpoint at quant_lambda 1. Exports and loaded models are cached per module, because the
  first forward of transformers' BitNet layers runs torch.compile (seconds on CPU).
- The logits tolerance is tight (1e-5 of the logit range) and comes from where the two computations
  differ: 1-ulp effects (transformers multiplies by a rounded 1/s where we divide by s; our STE
  computes x + (Q(x) - x); packed mode divides once after an integer matmul; sdpa vs eager attention).
  Measured: ~3e-7 of the range. Rarely such an ulp moves an activation across a .5 boundary of the
  int8 grid; that code then differs by one step and the logits by up to ~2% of their range (measured:
  one such flip in 8x64 random tokens). So the comparison also looks at the int8 activation codes
  entering every ternary projection: when they all agree (the case for the fixed test input here)
  the tight bound applies; otherwise the first differing code must sit within 1e-3 of a rounding
  boundary (a tie moved by an ulp, not a wrong number) and the logits must stay within 5% of the range.
- Refusals are checked to name the reason and to leave neither the output nor a temp folder behind.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from transformers.integrations.bitnet import AutoBitLinear, pack_weights, unpack_weights
from transformers.integrations.bitnet import BitLinear as StockBitLinear

from tests.export.conftest import SAMPLE_TEXT
from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export import hf_export
from wrinklefree_core.export.hf_export import HFExportError, check_hf_exportable, export_hf, pack_ternary
from wrinklefree_core.models.bitlinear import BitLinear, set_quant_lambda
from wrinklefree_core.models.checkpoint import CheckpointError, load_bitnet_checkpoint
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.quant.reference import activation_scale, quantize_activation

UNTIED = ("model.random.tie_word_embeddings=false",)
TIGHT = 1e-5  # of max |logit|: ~30x the measured ulp-level difference, ~300x below one code flip
FLIP_BOUND = 0.05  # of max |logit|, after a rounding-tie flip (measured up to 0.02)
IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(checkpoint_factory, tmp_path_factory):
    """(tied, packed, settings kwargs) -> (report, stock model, our model at lambda 1, checkpoint), built once."""
    cache: dict[tuple, tuple] = {}

    def get(tied: bool = True, packed: bool = False, **settings_kwargs):
        key = (tied, packed, tuple(sorted(settings_kwargs.items())))
        if key not in cache:
            ckpt = checkpoint_factory("tiny_llama", overrides=() if tied else UNTIED, **settings_kwargs)
            out = tmp_path_factory.mktemp("hf") / "export"
            report = export_hf(ckpt, out, ExportConfig(format="hf", hf_packed=packed))
            stock = AutoModelForCausalLM.from_pretrained(out).eval()
            ours, _ = load_bitnet_checkpoint(ckpt)
            set_quant_lambda(ours, 1.0)
            cache[key] = (report, stock, ours, ckpt)
        return cache[key]

    return get


def _activation_codes(model: nn.Module, ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(int8 codes, x * scale before rounding) of the activation entering each ternary projection.

    Keyed by module name, in execution order.
    """
    codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (BitLinear, AutoBitLinear, StockBitLinear)):

            def hook(mod, args, name=name):
                x = args[0]
                if isinstance(mod, BitLinear) and mod.sub_norm is not None:
                    x = mod.sub_norm(x)  # our SubLN lives inside the projection, BitNet's just before it
                codes[name] = (quantize_activation(x)[0], x.float() * activation_scale(x))

            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return codes


def assert_same_logits(stock: nn.Module, ours: nn.Module, ids: torch.Tensor = IDS) -> float:
    """Compare logits with the tolerance the module docstring derives; return max error / range."""
    with torch.no_grad():
        got, want = stock(input_ids=ids).logits, ours(input_ids=ids).logits
    err = (got - want).abs().max().item() / want.abs().max().item()
    theirs, mine = _activation_codes(stock, ids), _activation_codes(ours, ids)
    assert list(theirs) == list(mine)
    first = next((k for k in mine if not torch.equal(theirs[k][0], mine[k][0])), None)
    if first is None:
        assert err <= TIGHT, f"max error {err:.2e} of the logit range with identical int8 activations"
    else:
        scaled = mine[first][1][theirs[first][0] != mine[first][0]]
        tie_distance = ((scaled - scaled.floor()) - 0.5).abs().max().item()
        assert tie_distance < 1e-3, f"{first}: int8 codes differ {tie_distance:.2e} away from a rounding tie"
        assert err <= FLIP_BOUND, f"max error {err:.2e} of the logit range after a rounding-tie flip in {first}"
    return err


def assert_stock_only(model: nn.Module) -> None:
    """The loaded model is transformers' own BitNet, built from transformers and torch classes only."""
    assert type(model) is transformers.BitNetForCausalLM
    modules = {type(m).__module__ for m in model.modules()}
    assert all(m.startswith(("transformers.", "torch.")) for m in modules), modules


# ------------------------------------------------------------------------------------------- exports


@pytest.mark.parametrize("packed", [False, True], ids=["online", "packed"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_stock_transformers_computes_our_logits(exported, tied, packed):
    report, stock, ours, _ = exported(tied, packed)
    assert_stock_only(stock)
    assert report.packed is packed and report.ternary_modules == 14 and report.source_quant_lambda == 1.0
    layer = stock.model.layers[1]
    projections = [getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    projections += [getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
    if packed:
        assert all(type(p) is StockBitLinear and p.weight.dtype == torch.uint8 for p in projections)
    else:
        assert all(type(p) is AutoBitLinear and p.online_quant for p in projections)
    assert type(stock.lm_head) is nn.Linear  # the output head stays full precision, as in ours
    assert (stock.lm_head.weight is stock.model.embed_tokens.weight) is tied
    # The sub-norm weights are random in the checkpoint: they must arrive under BitNet's names.
    ours_norm = ours.model.layers[1].mlp.down_proj.sub_norm.weight
    assert torch.equal(layer.mlp.ffn_sub_norm.weight, ours_norm)
    assert_same_logits(stock, ours)


def test_config_and_side_files(exported):
    report, _, _, ckpt = exported(True, False)
    config = json.loads((report.path / "config.json").read_text())
    source = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "bitnet" and config["architectures"] == ["BitNetForCausalLM"]
    assert "auto_map" not in config and "bitnet" not in config  # nothing points back to our code
    assert config["quantization_config"] == {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "online",
        "modules_to_not_convert": ["lm_head"],
        "use_rms_norm": False,
        "rms_norm_eps": source["rms_norm_eps"],
    }
    for key in ("hidden_act", "tie_word_embeddings", "rope_parameters", "num_key_value_heads", "head_dim",
                "bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps", "vocab_size"):
        assert config[key] == source[key], key
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (report.path / name).read_bytes() == (ckpt / name).read_bytes(), name
    assert report.file_bytes["model.safetensors"] == (report.path / "model.safetensors").stat().st_size
    assert not [p for p in report.path.parent.iterdir() if p.name.startswith(".")]


def test_packed_is_much_smaller(exported):
    online, _, _, _ = exported(True, False)
    packed, _, _, _ = exported(True, True)

    def projection_bytes(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return sum(f.get_tensor(k).nbytes for k in f.keys() if k.endswith("_proj.weight"))

    # fp32 -> 2 bits: exactly 1/16 for the ternary matrices; the fp32 embedding dominates the rest.
    assert projection_bytes(packed.path) * 16 == projection_bytes(online.path)
    assert packed.file_bytes["model.safetensors"] < 0.4 * online.file_bytes["model.safetensors"]


@pytest.mark.parametrize("packed", [False, True], ids=["online", "packed"])
def test_greedy_generation_matches(exported, packed):
    report, stock, ours, _ = exported(True, packed)
    tokenizer = AutoTokenizer.from_pretrained(report.path)
    ids = tokenizer(SAMPLE_TEXT[:40], return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        theirs, mine = stock.generate(ids, **kwargs), ours.generate(ids, **kwargs)
    assert theirs.shape[1] == ids.shape[1] + 6
    assert theirs.tolist() == mine.tolist()


def test_partial_targets_and_mid_warmup_checkpoint(exported):
    """Projections left full precision stay nn.Linear; a lambda < 1 checkpoint exports its ternary network."""
    targets = ("k_proj", "o_proj", "up_proj", "down_proj")
    report, stock, ours, _ = exported(True, False, target_modules=targets, quant_lambda=0.5)
    assert_stock_only(stock)
    assert report.source_quant_lambda == 0.5 and report.ternary_modules == 8
    attn, mlp = stock.model.layers[0].self_attn, stock.model.layers[0].mlp
    assert type(attn.q_proj) is nn.Linear and type(mlp.gate_proj) is nn.Linear
    assert type(attn.k_proj) is AutoBitLinear and type(mlp.down_proj) is AutoBitLinear
    assert_same_logits(stock, ours)


def test_pack_ternary_is_transformers_layout():
    wq = torch.randint(-1, 2, (16, 12), generator=torch.Generator().manual_seed(0)).float()
    packed = pack_ternary(wq)
    assert packed.dtype == torch.uint8 and packed.shape == (4, 12)
    assert torch.equal(packed, pack_weights(wq.clone()))
    assert torch.equal(unpack_weights(packed, dtype=torch.float32), wq)


# -------------------------------------------------------------------------------------------- errors


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_hf(tmp_path / "nope", tmp_path / "out", ExportConfig(format="hf"))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "model, kwargs, reason",
    [
        ("tiny_qwen3", {}, "QK-norm"),
        ("tiny_qwen2", {}, "biases"),
        ("tiny_llama", {"subln": "none"}, "subln='none'"),
        ("tiny_llama", {"subln": "all"}, "subln='all'"),
        ("tiny_llama", {"skip_layers": (0,)}, "skip_layers"),
        ("tiny_llama", {"subln_eps": 1e-3}, "subln_eps"),
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["online", "packed"])
def test_refused_before_writing(checkpoint_factory, tmp_path, model, kwargs, reason, packed):
    ckpt = checkpoint_factory(model, **kwargs)
    with pytest.raises(HFExportError, match=reason) as info:
        export_hf(ckpt, tmp_path / "out", ExportConfig(format="hf", hf_packed=packed))
    assert "export.format=gguf" in str(info.value) or "Convert" in str(info.value)  # says what to do
    assert _leftovers(tmp_path) == []


def test_packed_needs_rows_divisible_by_four():
    # 32 heads of width 2 and one KV head: k_proj and v_proj have 2 output rows.
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=32, num_key_value_heads=1
    )
    check_hf_exportable(config, BitNetSettings(), packed=False)
    with pytest.raises(HFExportError, match="divisible by 4"):
        check_hf_exportable(config, BitNetSettings(), packed=True)


def test_destination_rules(checkpoint_factory, tmp_path, monkeypatch):
    ckpt = checkpoint_factory("tiny_llama")
    cfg = ExportConfig(format="hf")
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("keep me")
    with pytest.raises(HFExportError, match="not an empty folder or a previous export"):
        export_hf(ckpt, data, cfg)
    with pytest.raises(HFExportError, match="not an empty folder or a previous export"):
        export_hf(ckpt, ckpt, cfg)  # never over the checkpoint itself
    assert (data / "keep.txt").read_text() == "keep me"

    out = tmp_path / "out"
    export_hf(ckpt, out, cfg)
    before = (out / "model.safetensors").read_bytes()
    export_hf(ckpt, out, ExportConfig(format="hf", hf_packed=True))  # a previous export is replaced
    assert (out / "model.safetensors").read_bytes() != before

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_export, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(ckpt, out, cfg)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quantization_mode"] == "offline"
    assert _leftovers(tmp_path) == ["data", "out"]
