"""What a GGUF export wrote, as records and as text: the per-tensor table, the terminal summary, the adapter's table.

The writers (gguf_writer.py for the base file, gguf_lora.py for the LoRA adapter) fill these
records; the stage, the evaluation and the tests read them. They live apart from both writers so
that neither writer imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from wrinklefree_core.export.padding import PaddingPlan


@dataclass(frozen=True)
class TensorRecord:
    """One written tensor: names, chosen GGUF type, PyTorch shape, bytes of data (no padding)."""

    hf_name: str
    gguf_name: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class GGUFExportReport:
    """What write_gguf produced."""

    path: Path
    arch: str
    tensors: list[TensorRecord]
    file_bytes: int
    f16_bytes: int
    pre_tokenizer: str = ""
    notes: list[str] = field(default_factory=list)
    # The LoRA adapter GGUF published beside this file (LRC checkpoints; set by export_gguf).
    lora: LoraExportReport | None = None
    # The widths the file was padded to so that every ternary matrix is TQ (None: written as is).
    padding: PaddingPlan | None = None
    # Weights of the checkpoint the file holds, padding zeros not counted (bits per weight divide by it).
    weights: int = 0

    def types(self) -> dict[str, str]:
        """GGUF tensor name -> type name."""
        return {t.gguf_name: t.ggml_type for t in self.tensors}


@dataclass
class LoraExportReport:
    """What write_lora_gguf produced: the adapter file, and (`base`) the base GGUF written with it."""

    path: Path
    arch: str
    alpha: float
    adapter_type: str
    tensors: list[TensorRecord]
    ranks: dict[str, int]
    file_bytes: int
    base: GGUFExportReport | None = field(default=None, repr=False)

    def types(self) -> dict[str, str]:
        """GGUF tensor name -> type name."""
        return {t.gguf_name: t.ggml_type for t in self.tensors}


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_summary(report: GGUFExportReport) -> str:
    """A few lines for the terminal: tensors per type, size on disk with the adapter counted, bits per
    weight over the whole model (adapter bytes included), and the ratio to an all-F16 export."""
    counts: dict[str, int] = {}
    for t in report.tensors:
        counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
    weights = report.weights or sum(math.prod(t.shape) for t in report.tensors)
    adapter = report.lora.file_bytes if report.lora is not None else 0
    total = report.file_bytes + adapter
    size = _mib(report.file_bytes) + (f" + LoRA adapter {_mib(adapter)} = {_mib(total)}" if adapter else "")
    lines = [
        f"GGUF export: {report.path} (arch {report.arch}): "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        + " tensors",
        f"  size {size}; {8 * total / max(1, weights):.2f} bits per weight over {weights / 1e6:.1f}M weights"
        f"{' (adapter included)' if adapter else ''}; all-F16 export {_mib(report.f16_bytes)}",
    ]
    if report.padding is not None:
        lines.append(f"  padded with zeros so every ternary matrix is TQ: {report.padding.describe()}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


def format_report(report: GGUFExportReport) -> str:
    """A table of every tensor's GGUF type and size, a per-type summary, and the file size vs an F16 export."""
    rows = [("gguf tensor", "type", "shape (out x in)", "bytes")]
    rows += [(t.gguf_name, t.ggml_type, "x".join(map(str, t.shape)), str(t.nbytes)) for t in report.tensors]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"GGUF export: {report.path} (arch {report.arch}, pre-tokenizer {report.pre_tokenizer})"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    by_type: dict[str, list[int]] = {}
    for t in report.tensors:
        entry = by_type.setdefault(t.ggml_type, [0, 0])
        entry[0] += 1
        entry[1] += t.nbytes
    lines.append("")
    lines.append("by type: " + ", ".join(f"{k} {n} tensors {_mib(b)}" for k, (n, b) in sorted(by_type.items())))
    ratio = report.f16_bytes / report.file_bytes if report.file_bytes else float("nan")
    lines.append(
        f"file size {_mib(report.file_bytes)} ({report.file_bytes} bytes) vs all-F16 export "
        f"{_mib(report.f16_bytes)}: {ratio:.2f}x smaller"
    )
    if report.padding is not None:
        lines.append(f"padded with zeros so every ternary matrix is TQ: {report.padding.describe()}")
    lines += [f"note: {n}" for n in report.notes]
    if report.lora is not None:
        lines += ["", format_lora_report(report.lora)]
    return "\n".join(lines)


def format_lora_report(report: LoraExportReport) -> str:
    """A table of every adapter tensor (type, shape, bytes), the alpha/scale rule and the file size."""
    rows = [("lora tensor", "type", "shape", "bytes")]
    rows += [(t.gguf_name, t.ggml_type, "x".join(map(str, t.shape)), str(t.nbytes)) for t in report.tensors]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    ranks = sorted(set(report.ranks.values()))
    scale_rule = "alpha/rank = 1 for every pair" if report.alpha else "llama.cpp applies each pair at the adapter scale (1)"
    lines = [
        f"LoRA adapter GGUF: {report.path} (arch {report.arch}, {report.adapter_type}, {len(report.ranks)} LRC "
        f"adapters, ranks {ranks}, alpha {report.alpha:g}: {scale_rule})"
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"adapter file size {report.file_bytes / 2**20:.2f} MiB ({report.file_bytes} bytes)")
    return "\n".join(lines)
