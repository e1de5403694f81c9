"""LRC checkpoints export as base GGUF + LoRA adapter GGUF, and llama.cpp runs the pair like PyTorch.

Checkpoints: tiny converted models (conftest) with adapters added by add_lrc_adapters ("svd" init,
and "random": svd, then U redrawn non-zero so that the adapters move the logits by tens of percent).
Arch `bitnet` (no q/k permutation) and `llama` (U rows of q/k permuted like the base weight), TQ2_0
and the Q4_0 fallback (which llama.cpp repacks, so its LoRA tensors land in a plain CPU buffer),
F32 and F16 adapters, mixed ranks (alpha 0) and one uniform rank (alpha = rank).

Tolerances, as in test_gguf_llamacpp.py: every layer, fed llama.cpp's own input, within TIGHT of its
update above the noise floor, with and without the adapter. The adapters' effect on every layer must
exceed that bound many times over, or agreeing with the reference would not show that llama.cpp
applied them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter
from gguf import quants as gguf_quants
from transformers import AutoTokenizer

from tests.export.conftest import build_checkpoint
from wrinklefree_core.config import compose
from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export import (
    LLAMA_LOG_NAME,
    VERIFICATION_NAME,
    ExportError,
    VerificationError,
    export_gguf,
    format_report,
    gguf_lora,
    lora_path_for,
    verify_gguf,
    write_gguf,
    write_lora_gguf,
)
from wrinklefree_core.export.gguf_layout import permute_rows
from wrinklefree_core.export.padding import pad_model
from wrinklefree_core.export.llamacpp_api import compare_logits, llamacpp_logits, load_llama
from wrinklefree_core.stages.export import REPORT_NAME
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint, save_bitnet_checkpoint
from wrinklefree_core.models.lrc import add_lrc_adapters, lrc_modules, lrc_settings_of

TIGHT = 1e-3
# An adapter must move every layer by this many bounds for the layer check to prove it is applied.
EFFECT_MARGIN = 20

# id: (model, subln, rank_fraction, init, adapter type, arch, ternary GGUF type, alpha)
CASES = {
    "bitnet-svd-tq2_0": ("tiny_llama_256", "bitdistill", 0.25, "svd", "f32", "bitnet", "TQ2_0", 0.0),
    "bitnet-random-q4_0-f16": ("tiny_llama", "bitdistill", 0.25, "random", "f16", "bitnet", "Q4_0", 0.0),
    "llama-random-tq2_0": ("tiny_llama_256", "none", 0.25, "random", "f32", "llama", "TQ2_0", 0.0),
    # 0.01 * min(in, out) < 1 for every projection: rank 1 everywhere, so alpha = 1.
    "llama-rank1-q4_0": ("tiny_llama", "none", 0.01, "random", "f32", "llama", "Q4_0", 1.0),
    # Q8_0 pads every rank up to 32 (zero columns): one stored rank, so alpha = 32.
    "bitnet-random-q4_0-q8_0": ("tiny_llama", "bitdistill", 0.25, "random", "q8_0", "bitnet", "Q4_0", 32.0),
    "llama-random-tq2_0-q8_0": ("tiny_llama_256", "none", 0.25, "random", "q8_0", "llama", "TQ2_0", 0.0),
    # Width 64 padded to 256: V gets zero rows for the padded inputs, U for the padded outputs.
    "bitnet-random-padded-q5_0": ("tiny_llama", "bitdistill", 0.25, "random", "q5_0", "bitnet", "TQ2_0", 32.0),
    "llama-random-padded-q4_0": ("tiny_llama", "none", 0.25, "random", "q4_0", "llama", "TQ2_0", 32.0),
}


def cfg(case: str = "", **kw) -> ExportConfig:
    """Per-layer TIGHT for every case: bitnet-svd-tq2_0 has one K/V rounding that goes the other way in
    llama.cpp (an attention value of -9.499993 there, exactly -9.5 in the reference) and reached every
    later position end to end; fed llama.cpp's own inputs, each layer agrees within TIGHT."""
    pad = not case or CASES[case][6].startswith("TQ")  # the Q4_0 cases keep their width (export.pad=false)
    # A Q8_0 embedding: a K-quant one moves top-1 of these near-tied random logits (0.83 for Q6_K).
    kw.setdefault("float_type", "q8_0")
    return ExportConfig(verify_max_rel_error=TIGHT, verify_min_top1=1.0, pad=pad, **kw)


def make_lrc_checkpoint(out: Path, base: Path, rank_fraction: float, init: str, seed: int = 0) -> Path:
    """`base` with LRC adapters: SVD-initialised, and for init "random" U redrawn (non-zero, seeded)."""
    model, settings = load_bitnet_checkpoint(base)
    add_lrc_adapters(model, rank_fraction, "svd")
    if init == "random":
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for _, m in lrc_modules(model):
                # V from the SVD has columns of norm sqrt(sigma); a unit-scale U gives corrections
                # comparable to the ternary residual itself, i.e. clearly visible in the logits.
                m.lrc_U.copy_(torch.randn(m.lrc_U.shape, generator=gen) * 0.5)
    settings = settings.model_copy(update={"lrc": lrc_settings_of(model)})
    return save_bitnet_checkpoint(model, out, settings, AutoTokenizer.from_pretrained(str(base)))


@pytest.fixture(scope="module")
def lrc_checkpoint(checkpoint_factory, tmp_path_factory):
    """LRC checkpoint per (model, subln, rank_fraction, init), built once per module."""
    cache: dict[tuple, Path] = {}

    def get(model: str, subln: str, rank_fraction: float, init: str, **kw) -> Path:
        key = (model, subln, rank_fraction, init, repr(sorted(kw.items())))
        if key not in cache:
            base = checkpoint_factory(model, subln, **kw)
            out = tmp_path_factory.mktemp("lrc") / f"{model}-{subln}-lrc"
            cache[key] = make_lrc_checkpoint(out, base, rank_fraction, init)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def exported(lrc_checkpoint, tmp_path_factory):
    """Export (and verify) each case once per module: (checkpoint, report, verification)."""
    done: dict[str, tuple] = {}

    def get(case: str):
        if case not in done:
            model, subln, fraction, init, lora_type, *_ = CASES[case]
            ckpt = lrc_checkpoint(model, subln, fraction, init)
            out = tmp_path_factory.mktemp(case) / "model.gguf"
            report, result = export_gguf(ckpt, out, cfg(case), lora_type=lora_type)
            done[case] = (ckpt, report, result)
        return done[case]

    return get


# ----------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("case", list(CASES))
def test_llamacpp_base_plus_adapter_matches_the_lrc_model(case, exported):
    ckpt, report, result = exported(case)
    *_, arch, ternary_type, alpha = CASES[case]
    assert report.arch == arch == result["arch"] and report.lora.arch == arch
    assert ternary_type in report.types().values()
    assert result["passed"] and result["tokens_match"] and result["adapter"]["values_match_checkpoint"]
    assert result["adapter"]["alpha"] == alpha and result["adapter"]["pairs"] == result["adapter"]["pairs_expected"] == 14

    layers = result["layers"]
    assert all(r["rel_error"] <= r["bound"] <= TIGHT + 2 * layers["noise_floor"] for r in layers["per_layer"])
    assert layers["head"]["top1_agreement"] == 1.0
    # A Q8_0 adapter rounds its input to 8 bits (as llama.cpp does): the reference itself then agrees with
    # the exact model on only ~85% of top-1 tokens here (adapters moving the logits by tens of percent),
    # and llama.cpp must be about as close.
    ref_exact_top1 = result["reference_vs_exact"]["top1_agreement"]
    assert result["vs_exact"]["top1_agreement"] >= min(0.95, ref_exact_top1 - 0.05)

    # The base file alone is checked against the model without its corrections, just as tightly.
    base = result["base_alone"]["layers"]
    assert all(r["rel_error"] <= r["bound"] <= TIGHT + 2 * base["noise_floor"] for r in base["per_layer"])
    assert base["head"]["top1_agreement"] == 1.0

    # The adapter moves every layer far beyond its bound: without it, no layer would pass.
    assert result["adapter_effect_resolved"]
    assert layers["adapter_effect_margin"] > EFFECT_MARGIN
    effect = result["llama_cpp_base_vs_base_with_adapter"]["rel_l2_error"]
    assert effect == pytest.approx(result["adapter_effect"]["rel_l2_error"], rel=0.01)

    on_disk = json.loads((report.path.parent / VERIFICATION_NAME).read_text())
    assert on_disk["passed"] and on_disk["gguf"] == "model.gguf" and on_disk["lora_gguf"] == "model.lora.gguf"
    assert sorted(p.name for p in report.path.parent.iterdir()) == [LLAMA_LOG_NAME, "model.gguf", "model.lora.gguf", VERIFICATION_NAME]


def test_verification_holds_whatever_torch_thread_count(exported, tmp_path):
    """With torch on one thread the float32 reference of this model flips no activation rounding (its
    sampled floor was 1.6e-7) while llama.cpp flips some (2.8e-3 of a layer's update): the bound must
    come from the forced flips (verify_layers.py), not from whether one float32 run happened to flip."""
    case = "llama-random-tq2_0-q8_0"
    ckpt, report, _ = exported(case)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        result = verify_gguf(report.path, ckpt, cfg(case), json_path=tmp_path / "v.json", lora_path=report.lora.path)
    finally:
        torch.set_num_threads(threads)
    assert result["passed"], result["failures"]
    assert result["layers"]["noise_floor"] > 1e-4 and result["base_alone"]["layers"]["noise_floor"] > 1e-4


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("repack", [True, False], ids=["repack", "plain"])
@pytest.mark.parametrize("case", list(CASES))
def test_base_and_adapter_pass_on_every_kernel_path(case, repack, threads, exported, tmp_path):
    """With the adapter llama.cpp refuses repacked buffers for the adapted weights; alone, the base file
    is repacked where its type has a repacked layout (Q4_0 in this build). Both pass on every path."""
    ckpt, report, _ = exported(case)
    result = verify_gguf(
        report.path, ckpt, cfg(case, verify_repack=repack, verify_threads=threads), json_path=tmp_path / "v.json",
        lora_path=report.lora.path,
    )
    assert result["passed"] and result["adapter_effect_resolved"]
    for kp in (result["kernel_path"], result["base_alone"]["kernel_path"]):
        assert kp["threads"] == threads and kp["repack_requested"] is repack
    assert result["base_alone"]["kernel_path"]["repacked"] is (repack and "Q4_0" in report.types().values())


def test_llamacpp_loaded_directly_agrees_with_verification(exported):
    """Base + adapter through the plain llama-cpp-python API (lora_path) vs base alone, top-1 included."""
    ckpt, report, result = exported("llama-random-tq2_0")
    ids = result["hf_token_ids"]
    with_adapter, alone = load_llama(report.path, 256, report.lora.path), load_llama(report.path, 256)
    try:
        got, got_base = llamacpp_logits(with_adapter, ids), llamacpp_logits(alone, ids)
    finally:
        with_adapter.close()
        alone.close()
    model, _ = load_bitnet_checkpoint(ckpt)
    with torch.no_grad():
        exact = model(torch.tensor([ids])).logits[0].numpy()
    assert compare_logits(got, exact)["rel_l2_error"] == pytest.approx(result["vs_exact"]["rel_l2_error"], rel=1e-3)
    assert compare_logits(got, exact)["top1_agreement"] >= 0.95
    assert compare_logits(got_base, got)["rel_l2_error"] > EFFECT_MARGIN * 1e-4
    assert compare_logits(got_base, exact)["top1_agreement"] < 0.5, "without the adapter the model is another one"


# ----------------------------------------------------------------------------------- the files


@pytest.mark.parametrize(
    "case", ["bitnet-random-q4_0-f16", "llama-random-tq2_0", "llama-rank1-q4_0", "llama-random-tq2_0-q8_0", "llama-random-padded-q4_0"]
)
def test_adapter_file_metadata_shapes_and_values(case, exported):
    ckpt, report, _ = exported(case)
    *_, lora_type, arch, _, alpha = CASES[case]
    reader = GGUFReader(str(report.lora.path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["general.architecture"].contents() == arch
    assert float(reader.fields["adapter.lora.alpha"].contents()) == alpha == report.lora.alpha

    model, settings = load_bitnet_checkpoint(ckpt)
    if report.padding is not None:  # the file holds the padded model's U, V (zero rows for padded widths)
        model = pad_model(model, settings, report.padding).model
    tensors = {t.name: t for t in reader.tensors}
    base_names = {t.name for t in GGUFReader(str(report.path)).tensors}
    expected = set()
    for name, m in lrc_modules(model):
        base_name = next(t.gguf_name for t in report.tensors if t.hf_name == f"{name}.weight")
        assert base_name in base_names
        a, b = tensors[f"{base_name}.lora_a"], tensors[f"{base_name}.lora_b"]
        expected |= {a.name, b.name}
        # GGUF lists ne0 first: lora_a ne = [in, rank], lora_b ne = [rank, out]. Q8_0 stores the rank
        # padded up to a multiple of its 32-value block, with zero columns.
        rank = -(-m.rank // 32) * 32 if lora_type in ("q8_0", "q5_0", "q4_0") else m.rank
        assert [int(n) for n in a.shape] == [m.in_features, rank]
        assert [int(n) for n in b.shape] == [rank, m.out_features]
        assert a.tensor_type.name == b.tensor_type.name == lora_type.upper()
        u, v = m.lrc_U.detach().float(), m.lrc_V.detach().float()
        if arch == "llama" and name.endswith(("q_proj", "k_proj")):
            heads = model.config.num_attention_heads if name.endswith("q_proj") else model.config.num_key_value_heads
            u = permute_rows(u, heads)
            assert not torch.equal(u, m.lrc_U.detach().float()), "the permutation must move rows"
        u = torch.cat([u, torch.zeros(u.shape[0], rank - m.rank)], dim=1)
        v = torch.cat([v, torch.zeros(v.shape[0], rank - m.rank)], dim=1)
        want_a, want_b = v.T.contiguous().numpy(), u.contiguous().numpy()
        if lora_type == "f16":
            want_a, want_b = want_a.astype(np.float16), want_b.astype(np.float16)
        if lora_type in ("q8_0", "q5_0", "q4_0"):  # the raw blocks, as gguf's own quantizer writes them
            want_a, want_b = gguf_quants.quantize(want_a, a.tensor_type), gguf_quants.quantize(want_b, b.tensor_type)
        got_a = np.asarray(a.data).reshape(want_a.shape)
        got_b = np.asarray(b.data).reshape(want_b.shape)
        assert np.array_equal(got_a, want_a) and np.array_equal(got_b, want_b), name
    assert set(tensors) == expected
    assert not any("lrc" in t.hf_name for t in report.tensors), "the base file holds no adapter tensor"


def test_base_file_is_the_plain_ternary_export(exported, checkpoint_factory, tmp_path):
    """The base of an LRC export holds the same tensors as an export of the model before adapters."""
    _, report, _ = exported("bitnet-svd-tq2_0")
    plain = write_gguf(checkpoint_factory("tiny_llama_256", "bitdistill"), tmp_path / "plain.gguf", cfg(""))
    lrc_tensors = {t.name: np.asarray(t.data) for t in GGUFReader(str(report.path)).tensors}
    plain_tensors = {t.name: np.asarray(t.data) for t in GGUFReader(str(plain.path)).tensors}
    assert lrc_tensors.keys() == plain_tensors.keys()
    assert all(np.array_equal(lrc_tensors[n], plain_tensors[n]) for n in lrc_tensors)


def test_report_lists_the_adapter(exported):
    _, report, _ = exported("bitnet-svd-tq2_0")
    text = format_report(report)
    assert "LoRA adapter GGUF" in text and "model.lora.gguf" in text
    assert all(t.gguf_name in text for t in report.lora.tensors)
    assert report.lora.file_bytes == report.lora.path.stat().st_size
    assert report.lora.base is not None and report.lora.base.path == report.path


def test_write_lora_gguf_writes_both_files_and_verify_finds_the_adapter(lrc_checkpoint, tmp_path):
    ckpt = lrc_checkpoint("tiny_llama_256", "bitdistill", 0.25, "svd")
    base, adapter = tmp_path / "m.gguf", lora_path_for(tmp_path / "m.gguf")
    assert adapter.name == "m.lora.gguf"
    report = write_lora_gguf(ckpt, base, adapter, cfg("", lora_type="f16"))  # export.lora_type=f16
    assert report.path == adapter and report.base.path == base and report.adapter_type == "F16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.lora.gguf"]
    result = verify_gguf(base, ckpt, cfg(""))  # the adapter beside the base is picked up
    assert result["passed"] and result["lora_gguf"] == "m.lora.gguf"
    adapter.unlink()
    with pytest.raises(VerificationError, match="no adapter was given"):
        verify_gguf(base, ckpt, cfg(""))


def _with_adapters(base: Path, out: Path, init: str, edit=None) -> Path:
    model, settings = load_bitnet_checkpoint(base)
    add_lrc_adapters(model, 0.25, init)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    settings = settings.model_copy(update={"lrc": lrc_settings_of(model)})
    return save_bitnet_checkpoint(model, out, settings, AutoTokenizer.from_pretrained(str(base)))


def test_zero_adapters_export_but_say_they_cannot_be_confirmed(checkpoint_factory, tmp_path):
    """U = 0 (adapters as conversion adds them) is a valid export whose adapter changes nothing."""
    ckpt = _with_adapters(checkpoint_factory("tiny_llama", "bitdistill"), tmp_path / "zeros", "zeros")
    report, result = export_gguf(ckpt, tmp_path / "out" / "z.gguf", cfg(""))
    assert result["passed"] and result["adapter_effect"]["rel_l2_error"] == 0.0
    assert result["adapter_effect_resolved"] is False
    assert report.lora.path.name == "z.lora.gguf"


def test_export_stage_writes_and_reports_both_files(lrc_checkpoint, tmp_path):
    from wrinklefree_core.stages.export import run_export

    ckpt = lrc_checkpoint("tiny_llama", "bitdistill", 0.25, "random")
    out = tmp_path / "gguf" / "tiny.gguf"
    result = run_export(compose("export", [f"checkpoint={ckpt}", f"out={out}"]))
    summary = result.summary
    assert result.out == out
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [REPORT_NAME, LLAMA_LOG_NAME, "stage.json", "tiny.gguf", "tiny.lora.gguf", VERIFICATION_NAME]
    # The terminal gets a few lines with the size counted with the adapter; the table goes to the report file.
    lines = summary.splitlines()
    assert len(lines) <= 6 and "verified in llama.cpp: passed" in summary
    total = out.stat().st_size + (out.parent / "tiny.lora.gguf").stat().st_size
    assert f"= {total / 2**20:.2f} MiB" in lines[1] and "bits per weight" in lines[1] and "(adapter included)" in lines[1]
    table = (out.parent / REPORT_NAME).read_text()
    assert "LoRA adapter GGUF" in table and "blk.0.attn_q.weight.lora_a" in table and "blk.0.attn_q.weight.lora_a" not in summary


# ----------------------------------------------------------------------------------- failures


def test_base_only_export_of_an_lrc_checkpoint_is_refused(lrc_checkpoint, tmp_path):
    ckpt = lrc_checkpoint("tiny_llama", "bitdistill", 0.25, "random")
    with pytest.raises(ExportError, match=r"LoRA adapter.*<name>\.lora\.gguf"):
        write_gguf(ckpt, tmp_path / "m.gguf", cfg(""))
    assert list(tmp_path.iterdir()) == []


def test_lrc_layout_llama_cpp_cannot_run_writes_neither_file(lrc_checkpoint, tmp_path):
    """bitnet graph + a layer left without SubLN: refused before either file is opened."""
    ckpt = lrc_checkpoint("tiny_llama", "bitdistill", 0.25, "svd", skip_layers=[1])
    (tmp_path / "m.gguf").write_bytes(b"previous export")
    with pytest.raises(ExportError, match="skip_layers"):
        export_gguf(ckpt, tmp_path / "m.gguf", cfg(""))
    with pytest.raises(ExportError, match="skip_layers"):
        write_lora_gguf(ckpt, tmp_path / "m.gguf", tmp_path / "m.lora.gguf", cfg(""), lora_type="f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert (tmp_path / "m.gguf").read_bytes() == b"previous export"


def test_factors_beyond_fp16_are_refused_for_an_f16_adapter(checkpoint_factory, tmp_path):
    def blow_up(model):
        lrc_modules(model)[3][1].lrc_U[0, 0] = 1e5

    ckpt = _with_adapters(checkpoint_factory("tiny_llama", "bitdistill"), tmp_path / "big", "svd", blow_up)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="beyond fp16's range. Export the adapter as f32"):
        write_lora_gguf(ckpt, out / "m.gguf", out / "m.lora.gguf", cfg(""), lora_type="f16")
    assert not out.exists() or list(out.iterdir()) == []
    with pytest.raises(ExportError, match="not supported"):
        write_lora_gguf(ckpt, out / "m.gguf", out / "m.lora.gguf", cfg(""), lora_type="q2_k")
    # Q8_0 holds 1e5 (its fp16 block scale is 1e5 / 127); a scale beyond fp16 is refused the same way.
    write_lora_gguf(ckpt, out / "m.gguf", out / "m.lora.gguf", cfg(""), lora_type="q8_0")


@pytest.mark.parametrize(
    "value,refused,holds",
    [
        # 6e5 needs a Q4_0 block scale of 7.5e4 (largest code 8), beyond fp16; Q8_0's is 4.7e3.
        (6e5, "q4_0", "q8_0"),
        # 1e7 needs a Q8_0 block scale of 7.9e4 (largest code 127); f32 holds anything.
        (1e7, "q8_0", "f32"),
    ],
)
def test_factors_whose_block_scale_overflows_are_refused(checkpoint_factory, tmp_path, value, refused, holds):
    def blow_up(model):
        lrc_modules(model)[3][1].lrc_U[0, 0] = value

    ckpt = _with_adapters(checkpoint_factory("tiny_llama", "bitdistill"), tmp_path / "big", "svd", blow_up)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=f"{refused.upper()} block scale beyond fp16's range. Export the adapter as f32"):
        write_lora_gguf(ckpt, out / "m.gguf", out / "m.lora.gguf", cfg(""), lora_type=refused)
    assert not out.exists() or list(out.iterdir()) == []
    write_lora_gguf(ckpt, out / "m.gguf", out / "m.lora.gguf", cfg(""), lora_type=holds)


def _rewrite_adapter(src: Path, dst: Path, drop: set[str]) -> None:
    """Copy an adapter GGUF without the tensors in `drop` (what a broken or hand-edited file looks like)."""
    reader = GGUFReader(str(src))
    writer = GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(reader.fields["adapter.lora.alpha"].contents()))
    for t in reader.tensors:
        if t.name in drop:
            continue
        if t.tensor_type.name in ("F32", "F16"):
            writer.add_tensor(t.name, np.asarray(t.data).reshape(tuple(int(n) for n in reversed(t.shape))))
        else:  # raw blocks, as the reader holds them
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def written(lrc_checkpoint, tmp_path):
    """An unverified bitnet base + adapter pair in tmp_path."""
    ckpt = lrc_checkpoint("tiny_llama", "bitdistill", 0.25, "random")
    report = write_lora_gguf(ckpt, tmp_path / "m.gguf", tmp_path / "m.lora.gguf", cfg(""))
    return ckpt, report


def test_adapter_missing_a_layer_fails_verification(written, tmp_path):
    """llama.cpp runs such a file without complaint (that layer just goes uncorrected)."""
    ckpt, report = written
    broken = tmp_path / "broken.lora.gguf"
    _rewrite_adapter(report.path, broken, {"blk.1.ffn_down.weight.lora_a", "blk.1.ffn_down.weight.lora_b"})
    with pytest.raises(VerificationError, match="lacks the adapters of 1 of 14 LRC modules"):
        verify_gguf(report.base.path, ckpt, cfg(), lora_path=broken)
    result = json.loads((tmp_path / VERIFICATION_NAME).read_text())
    assert result["passed"] is False and result["adapter"]["pairs"] == 13
    assert result["lora_gguf"] == "broken.lora.gguf"


def test_adapter_missing_half_a_pair_is_a_clear_error(written, tmp_path):
    ckpt, report = written
    broken = tmp_path / "half.lora.gguf"
    _rewrite_adapter(report.path, broken, {"blk.0.attn_q.weight.lora_b"})
    with pytest.raises(VerificationError, match=r"'blk\.0\.attn_q\.weight\.lora_a' has no partner"):
        verify_gguf(report.base.path, ckpt, cfg(), lora_path=broken)
    assert json.loads((tmp_path / VERIFICATION_NAME).read_text())["passed"] is False


def test_unpermuted_adapter_is_caught_and_nothing_is_published(lrc_checkpoint, tmp_path, monkeypatch):
    """The classic bug: U of q/k written without the base weight's row permutation (arch llama).

    llama.cpp and the reference read the same wrong file and agree to float noise, so only the
    check of the file's values against the checkpoint can catch it.
    """
    monkeypatch.setattr(gguf_lora, "permute_rows", lambda w, heads: w)
    ckpt = lrc_checkpoint("tiny_llama_256", "none", 0.25, "random")
    out = tmp_path / "model.gguf"
    with pytest.raises(VerificationError, match="differ from the checkpoint's U, V"):
        export_gguf(ckpt, out, cfg(""))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LLAMA_LOG_NAME, VERIFICATION_NAME]
    result = json.loads((tmp_path / VERIFICATION_NAME).read_text())
    assert result["passed"] is False and result["adapter"]["values_match_checkpoint"] is False
    assert all(r["rel_error"] <= r["bound"] for r in result["layers"]["per_layer"])
