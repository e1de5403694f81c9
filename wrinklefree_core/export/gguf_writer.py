"""Write a BitNet checkpoint as one GGUF file that llama.cpp runs on CPU.

Design choices:
- Plan, then encode, then write: the layout (arch, names, refusals), the tokenizer metadata and every
  tensor's blocks are all computed before the output file is opened, so a refused or broken checkpoint
  never produces a file. (Encoded tensors are held in memory: ternary blocks are small, and the float
  embedding is the one tensor the size of an F16 export.)
- Atomic: the file is written to `<out>.tmp-<pid>` beside the target and renamed over it only when
  complete; on any error the temp file is removed and an existing file at `out` is left untouched.
  `write_atomically` does this for several files at once (a base GGUF and its LoRA adapter): all are
  written before any is renamed. The steps are public (prepare_gguf, write_prepared, build_report)
  so gguf_lora.py writes the base of an LRC checkpoint with exactly this code.
- `general.file_type` names the ternary type when any matrix uses it, else the fallback type; the
  per-tensor truth is in the file and in GGUFExportReport, which `format_report` prints as a table.
- `f16_bytes` is what the same file would take with every matrix in F16 (1-D tensors stay F32),
  computed from the shapes, so the report can state the size reduction without writing that file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export.gguf_layout import ExportError, GGUFLayout, permute_rows, plan_layout, target_arch
from wrinklefree_core.export.gguf_rope import ROPE_FREQS_NAME, add_rope_scaling
from wrinklefree_core.export.gguf_types import tensor_type
from wrinklefree_core.export.padding import ExportModel, export_model
from wrinklefree_core.export.gguf_report import GGUFExportReport, TensorRecord
from wrinklefree_core.export.gguf_quant import (
    FALLBACK_TYPES,
    FLOAT_TYPES,
    TERNARY_TYPES,
    EncodedTensor,
    encode_float,
    encode_ternary,
    float_type_for,
    ternary_type_for,
    type_nbytes,
)
from wrinklefree_core.export.gguf_tokenizer import GGUFVocab, read_vocab, write_vocab
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.config.bitnet import BitNetSettings

T = GGMLQuantizationType
_ALIGNMENT = 32  # GGUF's default general.alignment; tensor data is padded to it


def _pad(n: int) -> int:
    return (n + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


def encode_tensors(model: torch.nn.Module, layout: GGUFLayout, cfg: ExportConfig) -> list[tuple[str, EncodedTensor]]:
    """Encode every tensor of `layout` from `model`'s state dict, in layout order."""
    state = model.state_dict()
    float_type = FLOAT_TYPES[cfg.float_type]
    out = []
    for spec in layout.tensors:
        tensor = state[spec.hf_name]
        if spec.role == "ternary":
            qtype = ternary_type_for(tensor.shape[-1], cfg.ternary_type, cfg.fallback_type)
            enc = encode_ternary(tensor, qtype, spec.hf_name, spec.permute_heads)
        elif spec.role in ("matrix", "embedding", "output"):
            if spec.permute_heads is not None:
                tensor = permute_rows(tensor, spec.permute_heads)
            # A row too short for the type's blocks takes the next type that fits (reported per tensor).
            enc = encode_float(tensor, float_type_for(tensor.shape[-1], float_type), spec.hf_name)
        else:  # norms and biases stay F32
            if spec.permute_heads is not None:
                tensor = permute_rows(tensor, spec.permute_heads)
            enc = encode_float(tensor, T.F32, spec.hf_name)
        out.append((spec.gguf_name, enc))
    return out


def _file_type(encoded: list[tuple[str, EncodedTensor]], cfg: ExportConfig) -> LlamaFileType:
    used = {e.ggml_type for _, e in encoded}
    for qtype in (TERNARY_TYPES[cfg.ternary_type], FALLBACK_TYPES[cfg.fallback_type], FLOAT_TYPES[cfg.float_type]):
        if qtype in used:
            return tensor_type(qtype).file_type
    return LlamaFileType.ALL_F32


def _add_hparams(writer: GGUFWriter, layout: GGUFLayout, name: str, file_type: LlamaFileType) -> None:
    d = layout.dims
    writer.add_name(name)
    writer.add_context_length(d.n_ctx_train)
    writer.add_embedding_length(d.n_embd)
    writer.add_block_count(d.n_layer)
    writer.add_feed_forward_length(d.n_ff)
    writer.add_head_count(d.n_head)
    writer.add_head_count_kv(d.n_head_kv)
    writer.add_key_length(d.head_dim)
    writer.add_value_length(d.head_dim)
    writer.add_rope_dimension_count(d.head_dim)
    writer.add_rope_freq_base(d.rope_theta)
    add_rope_scaling(writer, d.rope)
    writer.add_layer_norm_rms_eps(d.rms_eps)
    writer.add_vocab_size(d.n_vocab)
    writer.add_file_type(file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)


def _write_file(
    path: Path, layout: GGUFLayout, vocab: GGUFVocab, encoded: list[tuple[str, EncodedTensor]], name: str, cfg: ExportConfig
) -> None:
    writer = GGUFWriter(str(path), layout.arch)
    try:
        _add_hparams(writer, layout, name, _file_type(encoded, cfg))
        write_vocab(writer, vocab)
        for gguf_name, enc in encoded:
            if enc.ggml_type in (T.F16, T.F32):
                writer.add_tensor(gguf_name, enc.data)
            else:
                writer.add_tensor(gguf_name, enc.data, raw_dtype=enc.ggml_type)
        if layout.dims.rope.freq_factors is not None:  # llama3 RoPE scaling (gguf_rope.py)
            writer.add_tensor(ROPE_FREQS_NAME, np.asarray(layout.dims.rope.freq_factors, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


@dataclass
class PreparedGGUF:
    """Everything a base GGUF needs, computed before any file is opened (see write_gguf).

    `model` is the model the file holds: the checkpoint's, or its padded copy (`source.padded`).
    """

    model: torch.nn.Module
    settings: BitNetSettings
    layout: GGUFLayout
    vocab: GGUFVocab
    encoded: list[tuple[str, EncodedTensor]]
    name: str
    source: ExportModel


def load_export_model(
    checkpoint_dir: str | os.PathLike, cfg: ExportConfig, *, with_lora: bool = False
) -> tuple[ExportModel, GGUFLayout]:
    """Load a checkpoint as the model its GGUF holds (padded when cfg.pad and a width needs it) and plan it.

    Refusals are checked on the checkpoint's own model first, so their messages name its real widths.
    """
    model, settings = load_bitnet_checkpoint(checkpoint_dir)
    plan_layout(model, settings, with_lora=with_lora)
    source = export_model(model, settings, target_arch(model, settings), cfg.pad)
    return source, plan_layout(source.model, source.settings, with_lora=with_lora)


def prepare_gguf(checkpoint_dir: str | os.PathLike, cfg: ExportConfig, *, with_lora: bool = False) -> PreparedGGUF:
    """Load the checkpoint, plan the layout, read the vocabulary and encode every base tensor.

    `with_lora` accepts a checkpoint with LRC adapters, whose adapters the caller writes as a LoRA GGUF
    (plan_layout). Raises CheckpointError / ExportError; writes nothing.
    """
    source, layout = load_export_model(checkpoint_dir, cfg, with_lora=with_lora)
    model = source.model
    vocab = read_vocab(checkpoint_dir, model.config, layout.dims.n_vocab)
    with torch.no_grad():
        encoded = encode_tensors(model, layout, cfg)
    return PreparedGGUF(model, source.settings, layout, vocab, encoded, Path(checkpoint_dir).resolve().name, source)


def check_output_path(out: Path) -> None:
    """Refuse an output path that is a folder (the caller must name the file)."""
    if out.is_dir():
        raise ExportError(f"Output path {out} is a folder; give the .gguf file name to write.")


def write_atomically(jobs: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Run each `write(tmp)` into a temp file beside its target, then rename every temp over its target.

    Files that belong together (a base GGUF and its LoRA adapter) are all written before any is
    renamed, so a failure while writing leaves every target untouched and no temp file behind.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for out, write in jobs:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
            staged.append((tmp, out))
            write(tmp)
            with open(tmp, "rb") as f:  # flushed to disk before the rename publishes it
                os.fsync(f.fileno())
        for tmp, out in staged:
            os.replace(tmp, out)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise


def write_prepared(prep: PreparedGGUF, path: Path, cfg: ExportConfig) -> None:
    """Write a prepared base GGUF to `path` (not atomic: callers stage it via write_atomically)."""
    _write_file(path, prep.layout, prep.vocab, prep.encoded, prep.name, cfg)


def build_report(prep: PreparedGGUF, out: Path) -> GGUFExportReport:
    """The report of a base GGUF written from `prep` at `out`."""
    encoded = prep.encoded
    file_bytes = out.stat().st_size
    data_bytes = sum(_pad(e.nbytes) for _, e in encoded)
    # The all-F16 size and the weight count are the checkpoint's own: padding zeros are cost, not weights.
    original = prep.source.original.state_dict()
    shapes = [tuple(original[spec.hf_name].shape) for spec in prep.layout.tensors]
    f16_data = sum(_pad(type_nbytes(shape, T.F16 if len(shape) > 1 else T.F32)) for shape in shapes)
    records = [
        TensorRecord(spec.hf_name, gguf_name, enc.ggml_type.name, enc.shape, enc.nbytes)
        for spec, (gguf_name, enc) in zip(prep.layout.tensors, encoded)
    ]
    return GGUFExportReport(
        path=out,
        arch=prep.layout.arch,
        tensors=records,
        file_bytes=file_bytes,
        f16_bytes=file_bytes - data_bytes + f16_data,
        pre_tokenizer=prep.vocab.pre,
        notes=list(prep.vocab.notes),
        padding=prep.source.padded.plan if prep.source.padded else None,
        weights=sum(math.prod(shape) for shape in shapes),
    )


def write_gguf(checkpoint_dir: str | os.PathLike, out_path: str | os.PathLike, cfg: ExportConfig) -> GGUFExportReport:
    """Export a BitNet checkpoint folder to a GGUF file at `out_path`, atomically; return what was written.

    Raises CheckpointError for a missing/corrupt checkpoint and ExportError for a layout, tokenizer or
    tensor llama.cpp cannot represent exactly (a checkpoint with LRC adapters included: its base and
    adapter are written together by gguf_lora.write_lora_gguf); in both cases nothing is written and
    an existing file at `out_path` is untouched.
    """
    out = Path(out_path)
    check_output_path(out)
    prep = prepare_gguf(checkpoint_dir, cfg)
    write_atomically([(out, lambda tmp: write_prepared(prep, tmp, cfg))])
    return build_report(prep, out)


def write_full_precision_gguf(hf_folder: str | os.PathLike, out_path: str | os.PathLike, float_type: str = "f32") -> GGUFExportReport:
    """Write an unconverted HF model (a teacher) as a GGUF of its own llama.cpp arch, every matrix `float_type`.

    This is the file a llama.cpp user starts from (convert_hf_to_gguf's output): llama.cpp's own
    quantizer turns it into the baselines a ternary export is compared with (evaluation/ptq.py).
    Same layout rules, tokenizer metadata and atomic write as a BitNet export.
    """
    from wrinklefree_core.models.sources import load_hf_model

    folder = Path(hf_folder)
    out = Path(out_path)
    check_output_path(out)
    model, _ = load_hf_model(folder)
    settings = BitNetSettings(subln="none")  # no BitLinear in the model: every projection is a float matrix
    cfg = ExportConfig(float_type=float_type, pad=False, verify=False)
    layout = plan_layout(model, settings)
    vocab = read_vocab(folder, model.config, layout.dims.n_vocab)
    with torch.no_grad():
        encoded = encode_tensors(model, layout, cfg)
    prep = PreparedGGUF(model, settings, layout, vocab, encoded, folder.resolve().name, ExportModel(model, model, settings))
    write_atomically([(out, lambda tmp: write_prepared(prep, tmp, cfg))])
    return build_report(prep, out)
