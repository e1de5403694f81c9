"""LRC adapters as a llama.cpp LoRA adapter GGUF, written together with the base GGUF.

A BitLinearLRC computes y = Q(W) Q(h) + U V^T h, where h is the layer's input after SubLN and
before activation quantization. llama.cpp's LoRA path computes, for every matmul of a base tensor
that an adapter names (llm_graph_context::build_lora_mm), y = W cur + scale * B (A cur), with `cur`
the f32 tensor that enters the matmul: on the `bitnet` graph that is the attn_sub_norm /
ffn_sub_norm output, the same h. So an LRC checkpoint exports exactly as base GGUF + LoRA GGUF.

Design choices:
- Both files come from one loaded model, are planned and encoded before either is opened, and are
  published together (gguf_writer.write_atomically): a refused checkpoint leaves neither file, and a
  base never appears without its adapter. The adapter is `<name>.lora.gguf` beside `<name>.gguf`
  (lora_path_for); the base is written by gguf_writer's own code with the LRC tensors left out.
- Tensors (llama.cpp src/llama-adapter.cpp): `<base tensor name>.lora_a` = V^T, numpy shape
  (rank, in) = ggml ne [in, rank], and `<base tensor name>.lora_b` = U, (out, rank) = ne [rank, out];
  the loader checks a.ne[0] == W.ne[0], b.ne[1] == W.ne[1], a.ne[1] == b.ne[0]. For arch `llama`,
  whose q/k rows are permuted for interleaved RoPE, the rows of U are permuted with the base
  weight's permutation (U is the output side); V^T is on the input side and stays as it is.
- Scale: llama.cpp multiplies each pair by `alpha / rank` (rank read from lora_b), or by the
  user's adapter scale alone when alpha is 0. LRC ranks differ per layer (ceil(f * min(in, out)):
  k/v under GQA get smaller ranks than q), so one alpha can give every pair scale 1 only when all
  ranks are equal: then alpha = rank (the usual PEFT-style value), otherwise alpha = 0. Either way
  llama.cpp applies U V^T exactly once at the default lora_scale 1; the factors are never rescaled.
- Precision: Q8_0 by default (8.5 bits per value, plus the rank padding below): on the smoke
  SmolLM2 it scored 211.13 in llama.cpp against 211.05 for F16 and 211.25 for PyTorch, at 45 instead
  of 75 MiB. F32 holds U and V exactly; F16 halves it. ggml multiplies an F16 matrix with
  the activation rounded to F16 and a Q8_0 one with the activation in Q8_0 blocks (their
  vec_dot_types), so such an adapter also rounds h and the rank-r intermediate; llamacpp_reference
  models both. Q8_0 blocks run along each row's input, so lora_b (rows of length rank) needs a rank
  that is a multiple of 32: U and V get zero columns up to it (stored_rank), which changes nothing
  in U V^T. F16 refuses factors beyond fp16's range; any non-finite factor is refused for every type.
- On a Q4_0 base llama.cpp's CPU backend repacks the weights into its CPU_REPACK buffer and warns
  that each LoRA pair falls back to the plain CPU buffer; expected and harmless (verified numbers).
- The adapter type is `export.lora_type`; a keyword argument overrides it (tests compare both types).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFType, GGUFWriter, Keys
from torch import nn

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export.gguf_layout import ExportError, GGUFLayout, permute_rows
from wrinklefree_core.export.gguf_quant import BLOCK_32_TYPES, LARGEST_CODE, EncodedTensor, encode_float
from wrinklefree_core.export.gguf_types import of_role
from wrinklefree_core.export.gguf_report import LoraExportReport, TensorRecord
from wrinklefree_core.export.gguf_writer import (
    build_report,
    check_output_path,
    prepare_gguf,
    write_atomically,
    write_prepared,
)
from wrinklefree_core.models.checkpoint import CONFIG_NAME, SETTINGS_KEY
from wrinklefree_core.models.lrc import lrc_modules

T = GGMLQuantizationType
ADAPTER_TYPES = of_role("adapter")
Q8_0_BLOCK = 32
LORA_SUFFIX = ".lora.gguf"
_FP16_MAX = float(np.finfo(np.float16).max)


def lora_path_for(base_path: str | os.PathLike) -> Path:
    """The adapter file that goes with a base GGUF: `<name>.gguf` -> `<name>.lora.gguf` in the same folder."""
    base = Path(base_path)
    stem = base.name[: -len(".gguf")] if base.name.endswith(".gguf") else base.name
    return base.with_name(stem + LORA_SUFFIX)


def checkpoint_has_lrc(checkpoint_dir: str | os.PathLike) -> bool:
    """True when the checkpoint's settings record LRC adapters (read from config.json, no weights loaded).

    An unreadable config gives False: the single-file export then reports the checkpoint problem.
    """
    try:
        config = json.loads((Path(checkpoint_dir) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    settings = config.get(SETTINGS_KEY) if isinstance(config, dict) else None
    return isinstance(settings, dict) and settings.get("lrc") is not None


@dataclass(frozen=True)
class LoraSpec:
    """One LRC module's adapter: the HF module, the base GGUF tensor it attaches to, its shape."""

    module: str
    base_name: str
    rank: int
    in_features: int
    out_features: int
    permute_heads: int | None = None

    @property
    def a_name(self) -> str:
        return f"{self.base_name}.lora_a"

    @property
    def b_name(self) -> str:
        return f"{self.base_name}.lora_b"


@dataclass(frozen=True)
class LoraLayout:
    """The adapter plan: llama.cpp arch (the base file's), alpha, one LoraSpec per LRC module."""

    arch: str
    alpha: float
    specs: list[LoraSpec] = field(default_factory=list)

    def by_tensor_name(self) -> dict[str, tuple[LoraSpec, str]]:
        """Adapter tensor name -> (spec, "a" or "b")."""
        out: dict[str, tuple[LoraSpec, str]] = {}
        for spec in self.specs:
            out[spec.a_name] = (spec, "a")
            out[spec.b_name] = (spec, "b")
        return out


def stored_rank(rank: int, adapter_type: str) -> int:
    """The rank an adapter is stored with: Q8_0/Q5_0/Q4_0 quantize lora_b's rows (length rank) in blocks of 32,
    so its rank is padded up with zero columns of U and V (exact: they add nothing to U V^T)."""
    if ADAPTER_TYPES[adapter_type] in BLOCK_32_TYPES:
        return -(-rank // Q8_0_BLOCK) * Q8_0_BLOCK
    return rank


def pad_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """`t` (rows, r) with zero columns appended up to `rank`."""
    if t.shape[1] == rank:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], rank - t.shape[1])], dim=1)


def lora_alpha(ranks: list[int]) -> float:
    """alpha that makes llama.cpp's scale exactly 1 for every pair: the rank if all agree, else 0."""
    unique = set(ranks)
    return float(unique.pop()) if len(unique) == 1 else 0.0


def plan_lora(model: nn.Module, layout: GGUFLayout, adapter_type: str = "f32") -> LoraLayout:
    """Map every BitLinearLRC of `model` to the base tensor of `layout` it corrects, or raise ExportError.

    Spec ranks are the ranks stored in an adapter of `adapter_type` (stored_rank); alpha follows them.
    """
    modules = lrc_modules(model)
    if not modules:
        raise ExportError(
            "The checkpoint has no LRC adapters, so there is no LoRA adapter to write. Export it as a single "
            "GGUF (write_gguf / export_gguf)."
        )
    base = {t.hf_name: t for t in layout.tensors}
    specs = []
    for name, m in modules:
        tensor = base.get(f"{name}.weight")
        if tensor is None or tensor.role != "ternary":
            raise ExportError(
                f"LRC adapter on '{name}' has no ternary base tensor in the {layout.arch} GGUF, so llama.cpp would "
                "not apply it. Add adapters only to converted BitLinear projections."
            )
        if tuple(m.lrc_U.shape) != (m.out_features, m.rank) or tuple(m.lrc_V.shape) != (m.in_features, m.rank):
            raise ExportError(
                f"LRC adapter on '{name}' has U {tuple(m.lrc_U.shape)} / V {tuple(m.lrc_V.shape)}, expected "
                f"({m.out_features}, {m.rank}) / ({m.in_features}, {m.rank}). Re-run the stage that wrote it."
            )
        rank = stored_rank(m.rank, adapter_type)
        specs.append(LoraSpec(name, tensor.gguf_name, rank, m.in_features, m.out_features, tensor.permute_heads))
    return LoraLayout(layout.arch, lora_alpha([s.rank for s in specs]), specs)


def resolve_adapter_type(cfg: ExportConfig, lora_type: str | None = None) -> str:
    """The adapter type to write: the argument, else `cfg.lora_type`."""
    chosen = lora_type or cfg.lora_type
    if chosen not in ADAPTER_TYPES:
        raise ExportError(f"LoRA adapter type '{chosen}' is not supported; choose one of {sorted(ADAPTER_TYPES)}.")
    return chosen


def _check_factor(t: torch.Tensor, name: str, qtype: GGMLQuantizationType) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ExportError(f"{name} has non-finite values; llama.cpp would produce NaN logits. Check the checkpoint.")
    peak = float(t.abs().max()) if t.numel() else 0.0
    if qtype == T.F16 and peak > _FP16_MAX:
        raise ExportError(f"{name} has values up to {peak:.3g}, beyond fp16's range. Export the adapter as f32.")
    largest_code = LARGEST_CODE.get(qtype)
    if largest_code and peak / largest_code > _FP16_MAX:
        raise ExportError(
            f"{name} has values up to {peak:.3g}, which need a {qtype.name} block scale beyond fp16's range. "
            "Export the adapter as f32."
        )


def encode_lora(model: nn.Module, plan: LoraLayout, adapter_type: str) -> list[tuple[str, EncodedTensor]]:
    """lora_a = V^T and lora_b = U (q/k rows permuted like the base) for every spec, in plan order."""
    qtype = ADAPTER_TYPES[adapter_type]
    modules = dict(model.named_modules())
    out = []
    for spec in plan.specs:
        m = modules[spec.module]
        u, v = m.lrc_U.detach().float(), m.lrc_V.detach().float()
        _check_factor(u, f"{spec.module}.lrc_U", qtype)
        _check_factor(v, f"{spec.module}.lrc_V", qtype)
        u, v = pad_rank(u, spec.rank), pad_rank(v, spec.rank)
        if spec.permute_heads is not None:
            u = permute_rows(u, spec.permute_heads)
        out.append((spec.a_name, encode_float(v.T.contiguous(), qtype, f"{spec.module}.lrc_V")))
        out.append((spec.b_name, encode_float(u.contiguous(), qtype, f"{spec.module}.lrc_U")))
    return out


def _write_adapter(path: Path, plan: LoraLayout, encoded: list[tuple[str, EncodedTensor]], name: str) -> None:
    writer = GGUFWriter(str(path), plan.arch)  # general.architecture must equal the base file's
    try:
        writer.add_type(GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, plan.alpha)
        for tensor_name, enc in encoded:
            if enc.ggml_type in (T.F16, T.F32):
                writer.add_tensor(tensor_name, enc.data)
            else:
                writer.add_tensor(tensor_name, enc.data, raw_dtype=enc.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def write_lora_gguf(
    checkpoint_dir: str | os.PathLike,
    base_gguf_path: str | os.PathLike,
    out_path: str | os.PathLike,
    cfg: ExportConfig,
    lora_type: str | None = None,
) -> LoraExportReport:
    """Write an LRC checkpoint as a base GGUF at `base_gguf_path` plus its LoRA adapter GGUF at `out_path`.

    The base holds the ternary model exactly as write_gguf would (LRC tensors left out); the adapter
    holds every U V^T (type `lora_type`, else `cfg.lora_type`: "q8_0", "q5_0", "q4_0", "f16" or "f32"). Both files are
    published together, atomically; on CheckpointError / ExportError (checkpoint without adapters,
    a layout llama.cpp cannot run, factors the type cannot hold) neither is written and existing files
    are untouched. Returns the adapter's report, with the base report as `.base`.
    """
    base_out, out = Path(base_gguf_path), Path(out_path)
    check_output_path(base_out)
    check_output_path(out)
    if base_out.resolve() == out.resolve():
        raise ExportError(f"The base GGUF and the LoRA adapter cannot both be written to {out}.")
    adapter_type = resolve_adapter_type(cfg, lora_type)
    prep = prepare_gguf(checkpoint_dir, cfg, with_lora=True)
    plan = plan_lora(prep.model, prep.layout, adapter_type)
    with torch.no_grad():
        encoded = encode_lora(prep.model, plan, adapter_type)
    write_atomically(
        [
            (base_out, lambda tmp: write_prepared(prep, tmp, cfg)),
            (out, lambda tmp: _write_adapter(tmp, plan, encoded, prep.name)),
        ]
    )
    by_name = dict(encoded)
    records = []
    for spec in plan.specs:
        for tensor_name, hf_name in ((spec.a_name, f"{spec.module}.lrc_V"), (spec.b_name, f"{spec.module}.lrc_U")):
            enc = by_name[tensor_name]
            records.append(TensorRecord(hf_name, tensor_name, enc.ggml_type.name, enc.shape, enc.nbytes))
    return LoraExportReport(
        path=out,
        arch=plan.arch,
        alpha=plan.alpha,
        adapter_type=ADAPTER_TYPES[adapter_type].name,
        tensors=records,
        ranks={spec.module: spec.rank for spec in plan.specs},
        file_bytes=out.stat().st_size,
        base=build_report(prep, base_out),
    )
