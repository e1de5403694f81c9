"""One spec per architecture and per llama.cpp graph (models/architectures/), read by conversion, the GGUF layout, padding and the HF export.

The recipe in docs/architecture.md, checked once: changing a graph's spec, and nothing else,
changes what the exporter writes and refuses.
"""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from tests.models.tiny import tiny_model
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.config.model import RandomInitConfig
from wrinklefree_core.export import ExportError, padding, plan_layout
from wrinklefree_core.models.architectures import SUPPORTED_ARCHITECTURES, architecture_of, graph, graphs
from wrinklefree_core.models.convert import convert_to_bitnet


def test_the_config_lists_the_registered_architectures_and_each_names_a_graph():
    assert get_args(RandomInitConfig.model_fields["architecture"].annotation) == tuple(SUPPORTED_ARCHITECTURES) == ("llama", "qwen2", "qwen3")
    assert set(graphs()) == {"bitnet", *(spec.gguf_arch for spec in SUPPORTED_ARCHITECTURES.values())}
    assert [s.model_type for s in SUPPORTED_ARCHITECTURES.values() if s.hf_bitnet] == ["llama"]
    assert architecture_of(tiny_model("qwen2").config).biased == frozenset({"q_proj", "k_proj", "v_proj"})
    with pytest.raises(KeyError, match="no llama.cpp graph 'gpt2'"):
        graph("gpt2")


def _plan(arch: str, **settings):
    s = BitNetSettings(**settings)
    return plan_layout(convert_to_bitnet(tiny_model(arch), s), s)


def test_the_exporter_does_what_the_graph_spec_says(monkeypatch):
    assert all(t.permute_heads is None for t in _plan("qwen2", subln="none").tensors)
    # Claim qwen2 rotates interleaved pairs and loads no biases: the layout permutes and refuses accordingly.
    monkeypatch.setitem(graphs(), "qwen2", dataclasses.replace(graph("qwen2"), rows_permuted=True))
    permuted = {t.gguf_name: t.permute_heads for t in _plan("qwen2", subln="none").tensors}
    assert permuted["blk.0.attn_q.weight"] and permuted["blk.0.attn_k.weight"] and permuted["blk.0.attn_v.weight"] is None
    monkeypatch.setitem(graphs(), "qwen2", dataclasses.replace(graph("qwen2"), biases=frozenset()))
    with pytest.raises(ExportError, match="k_proj, q_proj, v_proj biases and llama.cpp's qwen2 graph loads none of them"):
        _plan("qwen2", subln="none")
    # The bitnet graph with an untied head allowed stops refusing the untied Llama.
    with pytest.raises(ExportError, match="reuses the token embedding"):
        _plan("llama-untied")
    monkeypatch.setitem(graphs(), "bitnet", dataclasses.replace(graph("bitnet"), tied_head=False))
    assert _plan("llama-untied").arch == "bitnet"


def test_padding_keeps_the_width_tie_of_the_graph_it_exports_to(monkeypatch):
    model = convert_to_bitnet(tiny_model("qwen2"), BitNetSettings(subln="none"))
    asked: list[bool] = []
    real = padding.plan_padding
    monkeypatch.setattr(padding, "plan_padding", lambda *a, **kw: asked.append(kw["same_width"]) or real(*a, **kw))
    padding.plan_for_model(model, "qwen2")
    padding.plan_for_model(model, "qwen3")
    monkeypatch.setitem(graphs(), "qwen2", dataclasses.replace(graph("qwen2"), width_is_heads=False))
    padding.plan_for_model(model, "qwen2")
    assert asked == [True, False, False]
