"""Checkpoint tests: a converted model saved and loaded again is the same model, bit for bit.

Also pins the failure behaviour the stages rely on: every broken or missing checkpoint raises
CheckpointError saying what is wrong and what to run, and a failed save never damages the
checkpoint already at the destination nor leaves temporary folders behind.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.models.tiny import ARCHS, tiny_model, token_ids
from wrinklefree_core.models import checkpoint as ckpt
from wrinklefree_core.models.bitlinear import BitLinear, set_quant_lambda
from wrinklefree_core.models.checkpoint import (
    CheckpointError,
    is_bitnet_checkpoint,
    load_bitnet_checkpoint,
    save_bitnet_checkpoint,
)
from wrinklefree_core.models.convert import bitlinear_modules, convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings


def converted(arch: str, settings: BitNetSettings | None = None, seed: int = 0):
    """A converted tiny model with random SubLN weights, so that every saved tensor matters."""
    settings = settings or BitNetSettings()
    model = convert_to_bitnet(tiny_model(arch, seed=seed), settings)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for _, m in bitlinear_modules(model):
            if m.sub_norm is not None:
                m.sub_norm.weight.copy_(1.0 + 0.3 * torch.randn(m.sub_norm.weight.shape, generator=gen))
    return model, settings


@torch.no_grad()
def logits_of(model, ids):
    return model(input_ids=ids).logits


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("arch", ARCHS)
def test_reload_is_bit_exact(arch, tmp_path):
    model, settings = converted(arch)
    set_quant_lambda(model, 0.37)  # mid-warmup value that must come back
    out = save_bitnet_checkpoint(model, tmp_path / "ckpt", settings)

    loaded, loaded_settings = load_bitnet_checkpoint(out)
    assert loaded_settings == settings.model_copy(update={"quant_lambda": 0.37})
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert original[key].dtype == reloaded[key].dtype and torch.equal(original[key], reloaded[key]), key
    # Non-persistent buffers (RoPE inv_freq, quant_lambda) are rebuilt, not loaded: check them too.
    buffers = dict(loaded.named_buffers())
    for name, buf in model.named_buffers():
        assert torch.equal(buf, buffers[name]), name
    assert all(m.quant_lambda.item() == torch.tensor(0.37).item() for _, m in bitlinear_modules(loaded))
    assert {n for n, _ in bitlinear_modules(loaded)} == {n for n, _ in bitlinear_modules(model)}
    tied = model.config.tie_word_embeddings
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    ids = token_ids()
    assert torch.equal(logits_of(loaded, ids), logits_of(model.eval(), ids))


@pytest.mark.parametrize("arch", ["llama-tied", "llama-untied"])
def test_files_and_config(arch, tmp_path):
    model, settings = converted(arch, BitNetSettings(subln="all", skip_layers=[0], quant_lambda=0.5))
    extra = {"notes/run.txt": "hi", "raw.bin": b"\x00\x01"}
    out = save_bitnet_checkpoint(model, tmp_path / "ckpt", settings, tokenizer=tiny_tokenizer(), extra_files=extra)
    config = json.loads((out / "config.json").read_text())
    assert config["bitnet"] == settings.model_dump()
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] == (arch == "llama-tied")
    stored = load_file(str(out / "model.safetensors"))
    assert "model.embed_tokens.weight" in stored
    assert ("lm_head.weight" in stored) == (arch == "llama-untied")  # a tied embedding is stored once
    assert "model.layers.1.self_attn.q_proj.sub_norm.weight" in stored
    assert "model.layers.0.self_attn.q_proj.sub_norm.weight" not in stored  # layer 0 skipped
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert (out / "notes" / "run.txt").read_text() == "hi" and (out / "raw.bin").read_bytes() == b"\x00\x01"
    assert is_bitnet_checkpoint(out)
    assert leftovers(tmp_path) == []

    loaded, loaded_settings = load_bitnet_checkpoint(out)
    assert loaded_settings == settings
    assert type(loaded.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert isinstance(loaded.model.layers[1].self_attn.q_proj, BitLinear)


def test_load_with_dtype(tmp_path):
    model, settings = converted("qwen3")
    out = save_bitnet_checkpoint(model, tmp_path / "ckpt", settings)
    loaded, _ = load_bitnet_checkpoint(out, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits_of(loaded, token_ids())).all()


def test_overwrite_replaces_previous_checkpoint(tmp_path):
    first, settings = converted("qwen2", seed=0)
    second, _ = converted("qwen2", seed=1)
    out = tmp_path / "ckpt"
    save_bitnet_checkpoint(first, out, settings, extra_files={"stale.txt": "old"})
    save_bitnet_checkpoint(second, out, settings)
    assert not (out / "stale.txt").exists()
    loaded, _ = load_bitnet_checkpoint(out)
    assert torch.equal(logits_of(loaded, token_ids()), logits_of(second, token_ids()))
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ failure handling


@pytest.mark.parametrize("stage", ["weights", "tokenizer", "rename"])
def test_failed_save_keeps_previous_checkpoint_and_cleans_up(stage, tmp_path, monkeypatch):
    first, settings = converted("llama-tied", seed=0)
    second, _ = converted("llama-tied", seed=1)
    out = tmp_path / "ckpt"
    save_bitnet_checkpoint(first, out, settings)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class Boom(RuntimeError):
        pass

    def partial_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # half-written file, then the disk "fills up"
        raise Boom("disk full")

    class FailingTokenizer:
        def save_pretrained(self, path):
            raise Boom("tokenizer")

    tokenizer = None
    if stage == "weights":
        monkeypatch.setattr(ckpt, "save_file", partial_save_file)
    elif stage == "tokenizer":
        tokenizer = FailingTokenizer()
    else:
        real_rename = ckpt.os.rename

        def failing_rename(src, dst):
            if ".tmp-" in str(src):  # moving the new checkpoint into place fails after the old moved aside
                raise Boom("rename")
            return real_rename(src, dst)

        monkeypatch.setattr(ckpt.os, "rename", failing_rename)
    with pytest.raises(Boom):
        save_bitnet_checkpoint(second, out, settings, tokenizer=tokenizer)
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []
    loaded, _ = load_bitnet_checkpoint(out)
    assert torch.equal(logits_of(loaded, token_ids()), logits_of(first, token_ids()))


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    model, settings = converted("qwen3")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", fail)
    with pytest.raises(OSError):
        save_bitnet_checkpoint(model, tmp_path / "ckpt", settings)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    model, settings = converted("qwen3")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "important.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="Refusing to write"):
        save_bitnet_checkpoint(model, tmp_path / "data", settings)
    assert (tmp_path / "data" / "important.txt").read_text() == "keep me"


def test_save_refuses_settings_that_do_not_describe_the_model(tmp_path):
    model, _ = converted("qwen3", BitNetSettings(subln="bitdistill"))
    with pytest.raises(ValueError, match="do not describe"):
        save_bitnet_checkpoint(model, tmp_path / "ckpt", BitNetSettings(subln="none"))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path):
    model, settings = converted("llama-tied")
    return save_bitnet_checkpoint(model, tmp_path / "ckpt", settings)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist.*wrinklefree convert"):
        load_bitnet_checkpoint(tmp_path / "nope")
    assert not is_bitnet_checkpoint(tmp_path / "nope")


def test_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing.*wrinklefree convert"):
        load_bitnet_checkpoint(saved)
    assert not is_bitnet_checkpoint(saved)


def test_plain_hf_folder_is_not_a_checkpoint(tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path / "hf")
    assert not is_bitnet_checkpoint(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"plain Hugging Face model.*wrinklefree convert"):
        load_bitnet_checkpoint(tmp_path / "hf")


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors.*Re-run the stage"):
        load_bitnet_checkpoint(saved)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights(saved, damage):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*Re-run the stage"):
        load_bitnet_checkpoint(saved)


def test_missing_and_unexpected_tensors_are_named(saved):
    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.mlp.down_proj.sub_norm.weight"]
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as info:
        load_bitnet_checkpoint(saved)
    message = str(info.value)
    assert "model.layers.1.mlp.down_proj.sub_norm.weight" in message
    assert "model.layers.1.mlp.extra.weight" in message and "Re-run the stage" in message


def test_wrong_shape_is_a_checkpoint_error(saved):
    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_bitnet_checkpoint(saved)


def test_invalid_settings_in_config(saved):
    config = json.loads((saved / "config.json").read_text())
    config["bitnet"]["subln"] = "sideways"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Invalid 'bitnet' settings"):
        load_bitnet_checkpoint(saved)


def test_tied_config_with_different_stored_heads_is_refused(saved):
    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="tied"):
        load_bitnet_checkpoint(saved)


def test_tied_weight_stored_under_the_other_name_loads(saved):
    """Writers differ in which name of a tied pair they keep; either one is enough."""
    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    embedding = tensors.pop("model.embed_tokens.weight")
    tensors["lm_head.weight"] = embedding
    save_file(tensors, str(path))
    loaded, _ = load_bitnet_checkpoint(saved)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.model.embed_tokens.weight, embedding)
