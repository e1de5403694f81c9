"""The LoRA adapter GGUF of an LRC checkpoint, checked as a file before llama.cpp runs it.

llama.cpp needs general.type = adapter, adapter.type = lora and the base file's arch, one
lora_a/lora_b pair per LRC module with the right shapes and a supported type, and a scale of
exactly 1 (alpha = rank). The factors must equal the checkpoint's U, V as rounded to their type:
the reference reads U, V back from the file, so a writer bug that llama.cpp and the reference would
share (a wrong q/k row permutation of U) is caught only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, GGUFReader, GGUFType, Keys
from torch import nn

from wrinklefree_core.export.gguf_lora import ADAPTER_TYPES, LoraLayout, pad_rank
from wrinklefree_core.export.gguf_quant import quantize_roundtrip
from wrinklefree_core.export.llamacpp_reference import LoraPair, read_lora_tensors

_ADAPTER_GGML_TYPES = frozenset(ADAPTER_TYPES.values())


def adapter_type_of(lora_path: Path) -> str:
    """The export.lora_type an adapter file was written with (its tensors' type), "f32" when unclear:
    the file check then names what is wrong."""
    try:
        types = {GGMLQuantizationType(t.tensor_type) for t in GGUFReader(str(lora_path)).tensors}
    except Exception:  # unreadable: check_lora_file says so
        return "f32"
    names = [k for k, v in ADAPTER_TYPES.items() if {v} == types]
    return names[0] if names else "f32"


def check_lora_file(
    lora_path: Path, plan: LoraLayout, model: nn.Module
) -> tuple[dict[str, Any], list[str], dict[str, LoraPair] | None]:
    """Check an adapter GGUF against the checkpoint: (summary, failures, pairs read back or None).

    The pairs are None when the file cannot be read as this checkpoint's adapter (unknown tensors,
    half a pair, wrong shapes or types); the logits cannot be modelled then.
    """
    try:
        reader = GGUFReader(str(lora_path))
    except Exception as e:  # gguf raises assorted errors for garbage; all mean "not a GGUF"
        return {}, [f"the LoRA adapter is not a readable GGUF file ({e})"], None

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    required = ((Keys.General.TYPE, GGUFType.ADAPTER), (Keys.Adapter.TYPE, "lora"), (Keys.General.ARCHITECTURE, plan.arch))
    failures = [f"the LoRA adapter has {key} = {field(key)!r}, llama.cpp needs {want!r}" for key, want in required if field(key) != want]
    present = {t.name: t for t in reader.tensors}
    broken = _malformed(plan, present)
    missing = [s.module for s in plan.specs if s.a_name not in present and s.b_name not in present]
    if missing:
        failures.append(
            f"the LoRA adapter lacks the adapters of {len(missing)} of {len(plan.specs)} LRC modules "
            f"(first: {missing[:3]}); llama.cpp would run those layers uncorrected"
        )
    summary: dict[str, Any] = {
        "alpha": float(field(Keys.Adapter.LORA_ALPHA) or 0.0),
        "pairs": len(plan.specs) - len(missing),
        "pairs_expected": len(plan.specs),
        "ranks": sorted({s.rank for s in plan.specs}),
        "types": sorted({GGMLQuantizationType(t.tensor_type).name for t in reader.tensors}),
        "file_bytes": lora_path.stat().st_size,
    }
    if broken:
        return summary, failures + [f"the LoRA adapter is malformed: {b}" for b in broken], None
    pairs = read_lora_tensors(lora_path, plan)
    value_failures, summary["max_abs_value_error"] = _check_values(pairs, model)
    summary["values_match_checkpoint"] = not any("differ from the checkpoint" in f for f in value_failures)
    return summary, failures + value_failures, pairs


def _malformed(plan: LoraLayout, present: dict[str, Any]) -> list[str]:
    """What makes the file's tensors not this checkpoint's adapter: strangers, half pairs, shapes, types."""
    names = plan.by_tensor_name()
    broken = [f"tensor '{n}' belongs to no LRC adapter of the checkpoint" for n in present if n not in names]
    for spec in plan.specs:
        got = [n for n in (spec.a_name, spec.b_name) if n in present]
        if len(got) == 1:
            broken.append(f"'{got[0]}' has no partner ({spec.b_name if got[0] == spec.a_name else spec.a_name} is missing)")
        for name, shape in ((spec.a_name, (spec.rank, spec.in_features)), (spec.b_name, (spec.out_features, spec.rank))):
            t = present.get(name)
            if t is None:
                continue
            found = tuple(int(n) for n in reversed(t.shape))
            if found != shape:
                broken.append(f"'{name}' has shape {found}, expected {shape}")
            if GGMLQuantizationType(t.tensor_type) not in _ADAPTER_GGML_TYPES:
                broken.append(f"'{name}' is {t.tensor_type.name}; LoRA factors are written as F32, F16, Q8_0, Q5_0 or Q4_0")
    return broken


def _check_values(pairs: dict[str, LoraPair], model: nn.Module) -> tuple[list[str], float]:
    """(failures, largest abs difference): llama.cpp's scale is 1, and the factors are the checkpoint's U, V as rounded."""
    modules = dict(model.named_modules())
    wrong_scale, wrong_values, worst = [], [], 0.0
    for name, pair in pairs.items():
        if pair.scale != 1.0:
            wrong_scale.append(f"{name} ({pair.scale:g})")
        m = modules[name]
        rank = pair.u.value.shape[1]
        u, v = pad_rank(m.lrc_U.detach().float(), rank), pad_rank(m.lrc_V.detach().float(), rank)
        # What the file should hold: the factors rounded to their type along each stored row
        # (lora_b = U: rows of length rank; lora_a = V^T: rows of length in_features).
        expected = ((pair.u, quantize_roundtrip(u, pair.u.ggml_type)), (pair.v, quantize_roundtrip(v.T, pair.v.ggml_type).T))
        for got, want in expected:
            err = float((got.value - want).abs().max()) if want.numel() else 0.0
            worst = max(worst, err)
            if err:
                wrong_values.append(name)
    failures = []
    if wrong_scale:
        failures.append(f"llama.cpp would scale U V^T by alpha/rank != 1 for {wrong_scale[:3]}")
    if wrong_values:
        failures.append(
            f"the LoRA factors of {sorted(set(wrong_values))[:3]} differ from the checkpoint's U, V "
            f"(max abs {worst:.3g}; U rows must carry the base weight's q/k permutation)"
        )
    return failures, worst
