"""RoPE scaling carried into the GGUF: linear, yarn and llama3 models verified in llama.cpp, and the
same exports without the scaling caught, so each variant is shown to matter at the checked positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from tests.export.conftest import SAMPLE_TEXT, build_checkpoint, source_folder
from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export import gguf_layout, gguf_rope
from wrinklefree_core.export.verify import VerificationError, export_gguf
from wrinklefree_core.models.architectures import UnsupportedArchitectureError

VARIANTS = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, "bitdistill"),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}, "bitdistill"),
    "llama3": (
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        "none",
    ),
}
# A long prompt: the positions where the scaled and plain RoPE part ways.
CFG = ExportConfig(verify_prompt=SAMPLE_TEXT * 2)


def scaled_source(tmp: Path, rope: dict) -> Path:
    """tiny_llama_256's HF folder with `rope` merged into its rope_parameters."""
    folder = tmp / f"tiny-{rope['rope_type']}"
    shutil.copytree(source_folder("tiny_llama_256"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {**config["rope_parameters"], **rope}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def scaled_checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rope")
    return {
        kind: build_checkpoint(tmp / f"ckpt-{kind}", str(scaled_source(tmp, rope)), subln)
        for kind, (rope, subln) in VARIANTS.items()
    }


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_scaled_rope_exports_and_verifies(scaled_checkpoints, tmp_path, kind):
    out = tmp_path / "model.gguf"
    _, verification = export_gguf(scaled_checkpoints[kind], out, CFG)
    assert verification["passed"] is True
    reader = GGUFReader(out)
    arch = reader.fields["general.architecture"].contents()
    assert arch == ("llama" if kind == "llama3" else "bitnet")
    if kind == "llama3":
        (freqs,) = [t for t in reader.tensors if t.name == gguf_rope.ROPE_FREQS_NAME]
        factors = np.asarray(freqs.data)
        assert factors.shape == (32,) and factors[0] == 1.0 and factors[-1] == pytest.approx(8.0)
    else:
        assert reader.fields[f"{arch}.rope.scaling.type"].contents() == kind
        assert reader.fields[f"{arch}.rope.scaling.factor"].contents() == pytest.approx(4.0)


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_the_same_export_without_its_scaling_fails_verification(scaled_checkpoints, tmp_path, monkeypatch, kind):
    # The file says plain RoPE; the reference still computes the model's own (HF's RoPE code).
    monkeypatch.setattr(gguf_layout, "rope_scaling", lambda config: gguf_rope.RopeScaling("default"))
    with pytest.raises(VerificationError, match="differs from the reference"):
        export_gguf(scaled_checkpoints[kind], tmp_path / "model.gguf", CFG)
    assert not (tmp_path / "model.gguf").exists()


def test_llama3_scaling_with_subln_is_refused_at_convert(tmp_path):
    folder = scaled_source(tmp_path, VARIANTS["llama3"][0])
    with pytest.raises(UnsupportedArchitectureError, match=r"llama3 RoPE scaling needs per-frequency factors.*'bitnet'.*subln=none"):
        build_checkpoint(tmp_path / "ckpt", str(folder), "bitdistill")


@pytest.mark.parametrize("rope, named", [({"rope_type": "dynamic", "factor": 2.0}, "'dynamic'"), ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "truncate": False}, "truncate: false")])
def test_variants_llama_cpp_cannot_run_are_refused_at_convert(tmp_path, rope, named):
    folder = scaled_source(tmp_path, rope)
    with pytest.raises(UnsupportedArchitectureError, match=named):
        build_checkpoint(tmp_path / "ckpt", str(folder), "bitdistill")


def test_a_yarn_model_goes_from_convert_through_training_to_a_verified_gguf(tmp_path, private_cache_env):
    from wrinklefree_core import cli

    private_cache_env("rope-e2e")
    source = scaled_source(tmp_path, VARIANTS["yarn"][0])
    converted, trained, gguf = tmp_path / "converted", tmp_path / "trained", tmp_path / "gguf" / "model.gguf"
    assert cli.main(["convert", f"model={source}", f"out={converted}"]) == 0
    small = ["training.seq_len=64", "training.batch_size=2", "data.val_fraction=0.01"]
    assert cli.main(["train", f"model={converted}", "training=unified", "training.max_steps=3", *small, f"out={trained}"]) == 0
    assert cli.main(["export", f"checkpoint={trained}", "format=gguf", f"out={gguf}", "tracking.model_upload=false"]) == 0
    verification = json.loads((gguf.parent / "verification.json").read_text())
    assert verification["passed"] is True
    assert GGUFReader(gguf).fields["bitnet.rope.scaling.type"].contents() == "yarn"
