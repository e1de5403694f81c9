"""Arch choice, tensor names and refusals; bad input leaves no output file and no temp file behind."""

from __future__ import annotations

import shutil

import pytest

from tests.export.conftest import build_checkpoint
from tests.models.tiny import tiny_model
from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export import ExportError, plan_layout, write_gguf
from wrinklefree_core.models.checkpoint import CheckpointError
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings


def plan(arch: str, **settings):
    s = BitNetSettings(**settings)
    return plan_layout(convert_to_bitnet(tiny_model(arch), s), s)


def test_bitdistill_llama_becomes_bitnet_without_permutation():
    layout = plan("llama-tied")
    assert layout.arch == "bitnet" and layout.tied_embeddings
    names = {t.gguf_name: t for t in layout.tensors}
    assert "output.weight" not in names
    assert names["blk.0.attn_sub_norm.weight"].hf_name == "model.layers.0.self_attn.o_proj.sub_norm.weight"
    assert names["blk.1.ffn_sub_norm.weight"].hf_name == "model.layers.1.mlp.down_proj.sub_norm.weight"
    assert names["blk.0.attn_q.weight"].role == "ternary" and names["blk.0.attn_q.weight"].permute_heads is None
    assert names["token_embd.weight"].role == "embedding"


def test_subln_none_keeps_own_arch_and_llama_permutes_q_k():
    llama = {t.gguf_name: t for t in plan("llama-untied", subln="none").tensors}
    assert plan("llama-untied", subln="none").arch == "llama"
    assert llama["blk.0.attn_q.weight"].permute_heads == 4 and llama["blk.0.attn_k.weight"].permute_heads == 2
    assert llama["blk.0.attn_v.weight"].permute_heads is None
    assert llama["output.weight"].role == "output"
    qwen2 = plan("qwen2", subln="none")
    assert qwen2.arch == "qwen2"
    biases = {t.gguf_name for t in qwen2.tensors if t.role == "bias"}
    assert biases == {f"blk.{i}.attn_{p}.bias" for i in (0, 1) for p in "qkv"}
    assert all(t.permute_heads is None for t in qwen2.tensors)
    qwen3 = {t.gguf_name for t in plan("qwen3", subln="none").tensors}
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= qwen3


def test_skipped_layers_are_float_matrices_in_own_arch():
    layout = plan("llama-tied", subln="none", skip_layers=[1])
    roles = {t.gguf_name: t.role for t in layout.tensors}
    assert roles["blk.0.ffn_up.weight"] == "ternary" and roles["blk.1.ffn_up.weight"] == "matrix"


@pytest.mark.parametrize(
    "arch,settings,match",
    [
        ("llama-tied", dict(subln="all"), "SubLN 'all'"),
        ("qwen3", dict(), "QK-norm"),
        ("qwen2", dict(), "bias"),
        ("llama-untied", dict(), "lm_head"),
        ("llama-tied", dict(skip_layers=[0]), "skip_layers"),
        ("llama-tied", dict(target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]), "o_proj"),
        ("llama-tied", dict(subln_eps=1e-3), "subln_eps"),
    ],
)
def test_refusals_say_why_and_what_to_change(arch, settings, match):
    with pytest.raises(ExportError, match=match) as info:
        plan(arch, **settings)
    assert "Convert" in str(info.value) or "Use" in str(info.value)


# ------------------------------------------------------------------------------ bad input, no leftovers


def _assert_nothing_written(folder):
    assert sorted(p.name for p in folder.iterdir()) == []


def test_missing_checkpoint(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CheckpointError, match="does not exist"):
        write_gguf(tmp_path / "nope", out_dir / "m.gguf", ExportConfig())
    _assert_nothing_written(out_dir)


def test_corrupt_safetensors(tmp_path, checkpoint_factory):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("tiny_llama"), ckpt)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        write_gguf(ckpt, out_dir / "m.gguf", ExportConfig())
    _assert_nothing_written(out_dir)


@pytest.mark.parametrize("model,subln,match", [("tiny_llama", "all", "SubLN 'all'"), ("tiny_qwen3", "bitdistill", "QK-norm")])
def test_unsupported_layout_keeps_existing_file(tmp_path, model, subln, match):
    ckpt = build_checkpoint(tmp_path / "ckpt", model, subln)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "m.gguf").write_bytes(b"previous export")
    with pytest.raises(ExportError, match=match):
        write_gguf(ckpt, out_dir / "m.gguf", ExportConfig())
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.gguf"]
    assert (out_dir / "m.gguf").read_bytes() == b"previous export"


def test_error_while_writing_removes_temp_and_keeps_existing_file(tmp_path, checkpoint_factory, monkeypatch):
    from wrinklefree_core.export import gguf_writer

    seen = []

    def broken(self, *args, **kwargs):
        seen.extend(p.name for p in tmp_path.iterdir())  # the header is on disk by now
        raise OSError("disk full")

    monkeypatch.setattr(gguf_writer.GGUFWriter, "write_tensors_to_file", broken)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous export")
    with pytest.raises(OSError, match="disk full"):
        write_gguf(checkpoint_factory("tiny_llama"), out, ExportConfig())
    assert any(".tmp-" in name for name in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert out.read_bytes() == b"previous export"


def test_lrc_adapters_are_refused_with_a_pointer_to_the_lora_path():
    lrc = pytest.importorskip("wrinklefree_core.models.lrc")
    s = BitNetSettings()
    model = convert_to_bitnet(tiny_model("llama-tied"), s)
    lrc.add_lrc_adapters(model, rank_fraction=0.25)
    with pytest.raises(ExportError, match="LoRA adapter"):
        plan_layout(model, s)
