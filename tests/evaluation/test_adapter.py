"""Adapter share: LRC parameters over projection parameters, read from a saved checkpoint's header."""

from __future__ import annotations

from wrinklefree_core.evaluation.adapter import adapter_share
from wrinklefree_core.models.checkpoint import save_bitnet_checkpoint
from wrinklefree_core.models.convert import bitlinear_modules, convert_to_bitnet
from wrinklefree_core.models.lrc import add_lrc_adapters, lrc_parameters, lrc_settings_of
from wrinklefree_core.config.bitnet import BitNetSettings
from tests.models.tiny import tiny_model


def test_share_counts_what_the_model_holds(tmp_path):
    settings = BitNetSettings(skip_layers=[1])
    model = convert_to_bitnet(tiny_model("qwen3"), settings)
    save_bitnet_checkpoint(model, tmp_path / "plain", settings)
    projection = sum(m.weight.numel() for _, m in bitlinear_modules(model))
    assert adapter_share(tmp_path / "plain") == {"adapter_params": 0, "projection_params": projection, "adapter_share": 0.0}

    add_lrc_adapters(model, 0.25)
    save_bitnet_checkpoint(model, tmp_path / "lrc", settings.model_copy(update={"lrc": lrc_settings_of(model)}))
    adapters = sum(p.numel() for p in lrc_parameters(model))
    share = adapter_share(tmp_path / "lrc")
    assert share["adapter_params"] == adapters > 0 and share["projection_params"] == projection
    assert share["adapter_share"] == adapters / projection


def test_anything_but_a_bitnet_checkpoint_has_no_share(tmp_path):
    tiny_model("llama-tied").save_pretrained(tmp_path / "hf")
    assert adapter_share(tmp_path / "hf") is None
    assert adapter_share(tmp_path / "missing") is None
