"""`wrinklefree eval checkpoint=FILE.gguf`: a real export beside llama.cpp's quantization of its teacher.

The chain is the pipeline's: `wrinklefree convert` (stage.json names the source model), `wrinklefree
export` (the GGUF, padded for TQ, with its stage.json), then the comparison, which finds the teacher
through those manifests, makes the baselines with llama.cpp's quantizer, scores every row on the same
held-out rows and times the GGUFs together.
"""

from __future__ import annotations

import json

import pytest

from wrinklefree_core.cli import main
from wrinklefree_core.evaluation.size import file_weights

EVAL = ["data=heldout_eval", "training.seq_len=32", "eval.max_sequences=4"]
FAST_SPEED = ["eval.speed.prompt_length=16", "eval.speed.decode_steps=8", "eval.speed.rounds=2"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    assert main(["convert", "model=tiny_llama", f"out={root / 'ckpt'}"]) == 0
    gguf = root / "gguf" / "tiny_llama.gguf"
    assert main(["export", f"checkpoint={root / 'ckpt'}", f"out={gguf}"]) == 0
    return gguf


def test_gguf_eval_puts_the_export_beside_llamacpp_baselines(exported, capsys):
    capsys.readouterr()
    assert main(["eval", f"checkpoint={exported}", *EVAL, *FAST_SPEED, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    evals = {e["label"]: e for e in out["evals"]}
    assert list(evals) == ["teacher", "teacher-f16", "teacher-q4_0", "teacher-q2_k", "tiny_llama.gguf"]
    assert evals["teacher"]["kind"] == "hf" and all(e["kind"] == "gguf" for k, e in evals.items() if k != "teacher")
    # Same rows for everyone: the same token counts per source.
    tokens = {k: {s: r["tokens"] for s, r in e["sources"].items()} for k, e in evals.items()}
    assert all(t == tokens["teacher"] for t in tokens.values())
    # F16 in llama.cpp is the teacher up to fp16 weights: measured 1.3e-5 here, 2.1e-4 on SmolLM2-135M (AMD EPYC).
    assert evals["teacher-f16"]["perplexity"] == pytest.approx(evals["teacher"]["perplexity"], rel=2e-3)
    ours = evals["tiny_llama.gguf"]
    manifest = json.loads((exported.parent / "stage.json").read_text())
    size = ours["size"]
    assert size["base_bytes"] == exported.stat().st_size and size["adapter_bytes"] == 0
    # Padding zeros are cost, not weights: bits per weight divide by the checkpoint's own count.
    assert size["weights"] == manifest["metrics"]["weights"] < file_weights(exported)
    assert size["bits_per_weight"] == pytest.approx(8 * size["bytes"] / size["weights"])
    assert manifest["metrics"]["bits_per_weight"] == pytest.approx(size["bits_per_weight"])
    for label in ("teacher-f16", "teacher-q4_0", "teacher-q2_k", "tiny_llama.gguf"):
        speed = evals[label]["speed"]
        assert speed["decode_min"] <= speed["decode_tps"] <= speed["decode_max"] and speed["prompt_tps"] > 0, label
        assert (speed["threads"], speed["rounds"]) == (1, 2)
    assert "speed" not in evals["teacher"] and "size" not in evals["teacher"]
    assert out["verdict"].startswith("verdict: tiny_llama.gguf ")
    assert all(f"vs {b}:" in out["verdict"] for b in ("teacher-f16", "teacher-q4_0", "teacher-q2_k"))


def test_gguf_eval_prints_the_table_and_verdict(exported, capsys):
    capsys.readouterr()
    assert main(["eval", f"checkpoint={exported}", *EVAL, "eval.baselines=[q4_0]", "eval.speed.enabled=false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("artifact"))
    assert "MiB" in header and "bits/weight" in header and "decode tok/s" in header
    assert [ln.split()[0] for ln in lines[lines.index(header) + 1 : -1]] == ["teacher", "teacher-q4_0", "tiny_llama.gguf"]
    assert lines[-1].startswith("verdict: tiny_llama.gguf ") and "(speed not measured)" in lines[-1]
    assert not any(ln.startswith("speed:") for ln in lines)


def test_gguf_eval_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", f"checkpoint={tmp_path / 'nope.gguf'}"]) == 2
    assert "does not exist: pass checkpoint=FILE.gguf" in capsys.readouterr().err


def test_gguf_eval_without_provenance_asks_for_the_teacher(exported, tmp_path, capsys):
    lone = tmp_path / "lone.gguf"
    lone.write_bytes(exported.read_bytes())
    assert main(["eval", f"checkpoint={lone}", *EVAL]) == 2
    assert "stage.json" in capsys.readouterr().err
