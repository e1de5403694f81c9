"""llama.cpp's own quantization of a teacher: the full-precision GGUF our writer gives it, and the baselines.

The F32 GGUF of a teacher must compute the teacher's logits in llama.cpp (q/k permutation, biases,
QK-norm, tied or untied head), or every baseline row would be wrong before quantization starts. The
bound: llama.cpp runs F32 weights in F32 (no activation rounding), so only summation order differs;
measured relative L2 <= 3e-6 on these models, asserted at 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from wrinklefree_core.evaluation.ptq import BaselineError, ptq_files
from wrinklefree_core.export.gguf_writer import write_full_precision_gguf
from wrinklefree_core.export.llamacpp_api import llamacpp_logits, load_llama
from wrinklefree_core.models.sources import load_hf_model


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2", "tiny_qwen3"])
def test_full_precision_gguf_computes_the_teacher(model, teacher_folder, tmp_path):
    folder = teacher_folder(model)
    out = tmp_path / "teacher-f32.gguf"
    report = write_full_precision_gguf(folder, out, "f32")
    hf, _ = load_hf_model(folder)
    assert report.weights == sum(p.numel() for p in {id(p): p for p in hf.parameters()}.values())
    types = {t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert types == {"F32"}
    ids = [int(t) for t in np.random.default_rng(0).integers(3, hf.config.vocab_size, size=24)]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    llm = load_llama(out, n_ctx=64)
    try:
        got = llamacpp_logits(llm, ids)
    finally:
        llm.close()
    assert _rel_l2(got, ref) < 1e-4, model


def test_baselines_are_llamacpp_quantizations_of_the_teacher(teacher_folder):
    folder = teacher_folder("tiny_llama")
    files = ptq_files(folder, ["f16", "q4_0", "q2_k"])
    assert {t: p.name for t, p in files.items()} == {t: f"teacher-{t}.gguf" for t in ("f16", "q4_0", "q2_k")}
    matrix_types = {}
    for ptq_type, path in files.items():
        tensors = GGUFReader(str(path)).tensors
        matrix_types[ptq_type] = {t.tensor_type.name for t in tensors if len(t.shape) > 1 and "token_embd" not in t.name}
        manifest = json.loads((path.parent / "stage.json").read_text())
        # The rows are tokenized by the teacher's tokenizer, and bits per weight divide by its weights.
        assert manifest["inputs"]["checkpoint"] == str(folder.resolve())
        assert manifest["metrics"]["weights"] == sum(int(np.prod(t.shape)) for t in tensors)
    assert matrix_types["f16"] == {"F16"}
    assert matrix_types["q4_0"] == {"Q4_0"}
    # 64-wide rows have no 256-block: llama.cpp's quantizer falls back for Q2_K, as it would for the user.
    assert "Q2_K" not in matrix_types["q2_k"] and matrix_types["q2_k"] <= {"Q4_0", "Q5_0", "Q8_0", "F16"}
    sizes = {t: p.stat().st_size for t, p in files.items()}
    assert sizes["q4_0"] < sizes["f16"]
    # Made once: a second call returns the same files without rewriting them.
    mtimes = {t: p.stat().st_mtime_ns for t, p in files.items()}
    again = ptq_files(folder, ["q4_0", "f16"])
    assert {t: p.stat().st_mtime_ns for t, p in again.items()} == {t: mtimes[t] for t in ("q4_0", "f16")}


def test_baseline_needs_an_hf_teacher(tmp_path):
    with pytest.raises(BaselineError, match="not a Hugging Face model folder"):
        ptq_files(tmp_path, ["q4_0"])


def test_unknown_baseline_type_is_refused(teacher_folder):
    with pytest.raises(BaselineError, match="unknown baseline type.*q4_0"):
        ptq_files(teacher_folder("tiny_llama"), ["q5_9"])
