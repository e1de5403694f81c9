"""Run an exported GGUF in llama.cpp and check it against PyTorch: tokens and logits.

Checks, all on `cfg.verify_prompt`:
- llama.cpp's own tokenizer (from the GGUF metadata) gives the same ids as the checkpoint's HF tokenizer;
- the file's tensors, read back, equal the checkpoint's (ternary values times the fp16 scale, float
  tensors rounded to their type; verify_weights.py), since the reference below reads the file;
- layer by layer (verify_layers.py): llama.cpp's hidden states, read through its eval callback
  (llamacpp_run.py), against the modelled reference (llamacpp_reference: the GGUF's weights, llama.cpp's
  activation rounding), each layer fed llama.cpp's own input: relative error of every layer's update
  <= verify_max_rel_error above the model's noise floor, the same for the output head, and the head's
  top-1 agreement >= verify_min_top1;
- end to end, llama.cpp's logits vs the reference and vs the exact PyTorch model are reported beside it
  (vs_reference, vs_exact, noise_floor), not gated.

Why per layer: each int8/Q8 activation quantizer turns a last-bit difference into a whole step when a
value sits on a rounding boundary, and a deep model amplifies that step from layer to layer. llama.cpp's
kernel paths (repacked weights or not, AVX2 / AVX-512 / AMX builds, thread counts) sum in their own
fp32 orders, so end to end two correct paths differ by up to ~1% on a deep model: a bound taken from one
CPU's sample failed on another (an Intel AMX host, 2026-12). Fed its own inputs, a layer can only differ
by what it computes itself. The noise floor is how far the reference moves from itself when only its
float rounding changes (fp32 instead of fp64 accumulation), fed the same inputs, at its largest over the
layers; the configured tolerance applies on top of NOISE_FACTOR floors, and the json records every floor
and bound used, and the kernel path that ran (`kernel_path`: CPU, threads, repacked or not, features).

Design choices:
- llama.cpp runs with an F32 KV cache, no flash attention and logits for all positions, so the only
  deliberate differences from PyTorch are the ones the reference models.
- The outcome is written to `verification.json` beside the GGUF (written atomically), pass or fail.
- Failure policy: `verify_gguf` on its own raises VerificationError and leaves the file it was given
  alone (it is the caller's file; the json says "passed": false). `export_gguf` writes the new file
  under a staging name, verifies that, and publishes it under the real name only when it passes; on
  failure the staging file is deleted and an existing file at the real name is left untouched, with
  its own verification.json (the failed one is then verification.failed.json). A file under the
  expected name is therefore always one that passed, beside the verification it passed (a user who
  wants to inspect a failing export can rerun with export.verify=false).

LRC checkpoints (base GGUF + LoRA adapter GGUF, gguf_lora.py) get the same checks for base + adapter
against the PyTorch LRC model, plus:
- the adapter file itself: general.type/adapter.type/arch, one lora_a/lora_b pair per LRC module
  with the right shapes, a llama.cpp scale of exactly 1, and factors equal to the checkpoint's U, V
  (F16: fp16-rounded). The reference reads U, V back from the file, so a writer bug that llama.cpp
  and the reference would share (a wrong q/k row permutation of U) is caught only here;
- the base file alone vs the reference without adapters (its own noise floor and bounds), which
  pins each file separately;
- `adapter_effect`: how far the adapters move the (modelled) logits. When that is below the
  tolerance, the logits check could not tell an applied adapter from a missing one; the json says
  so (`adapter_effect_resolved`: false) without failing, since a U = 0 adapter is a valid export.
`export_gguf` writes both files of an LRC checkpoint (`<name>.gguf`, `<name>.lora.gguf`) under
staging names and publishes both only when both pass; one verification.json describes them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFType, Keys
from torch import nn

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export.gguf_layout import GGUFLayout, plan_layout, target_arch
from wrinklefree_core.export.gguf_lora import (
    ADAPTER_TYPES,
    LoraLayout,
    checkpoint_has_lrc,
    lora_path_for,
    pad_rank,
    plan_lora,
    write_lora_gguf,
)
from wrinklefree_core.export.gguf_quant import quantize_roundtrip
from wrinklefree_core.export.gguf_report import GGUFExportReport
from wrinklefree_core.export.gguf_writer import write_gguf
from wrinklefree_core.export.llamacpp_log import llamacpp_log_to
from wrinklefree_core.export.llamacpp_run import LlamaRun, run_llamacpp
from wrinklefree_core.export.padding import ExportModel, export_model, identity_error, needs_padding
from wrinklefree_core.export.llamacpp_reference import (
    GGUFTensor,
    LoraPair,
    lrc_disabled,
    read_gguf_tensors,
    read_lora_tensors,
    reference_logits,
)
from wrinklefree_core.export.verify_layers import NOISE_FACTOR, check_layers
from wrinklefree_core.export.verify_weights import check_weights
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.models.lrc import lrc_modules
from wrinklefree_core.storage.atomic import atomic_write_text

VERIFICATION_NAME = "verification.json"
LLAMA_LOG_NAME = "llama_cpp.log"  # llama.cpp's own log of the verification, beside the json
# A re-export that fails beside a published GGUF: its record, leaving that file's own verification alone.
FAILED_VERIFICATION_NAME, FAILED_LOG_NAME = "verification.failed.json", "llama_cpp.failed.log"
_ADAPTER_GGML_TYPES = frozenset(ADAPTER_TYPES.values())


class VerificationError(RuntimeError):
    """The GGUF does not reproduce the checkpoint in llama.cpp within tolerance (details in verification.json)."""


class _LoadFailed(Exception):
    """llama.cpp could not load or run the file(s), or (`attempted` False) they were not fit to try;
    `failures` are the checks that failed before, `extra` the json entries gathered so far."""

    def __init__(
        self, message: str, failures: list[str] | None = None, extra: dict[str, Any] | None = None, attempted: bool = True
    ):
        super().__init__(message)
        self.failures = failures or []
        self.extra = extra or {}
        self.attempted = attempted


def compare_logits(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Errors of `got` vs `want` (both (tokens, vocab)): max abs, median over positions of the per-position
    max abs (robust to the rare position where one activation lands on the other side of a rounding
    boundary), relative L2, and top-1 agreement."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    diff = got64 - want64
    return {
        "max_abs_error": float(np.abs(diff).max()),
        "median_position_max_abs_error": float(np.median(np.abs(diff).max(axis=-1))),
        "rel_l2_error": float(np.linalg.norm(diff) / max(np.linalg.norm(want64), 1e-30)),
        "top1_agreement": float(np.mean(got.argmax(-1) == want.argmax(-1))),
    }


def load_llama(gguf_path: str | Path, n_ctx: int, lora_path: str | Path | None = None):
    """Open a GGUF in llama.cpp the way verification needs it (all logits, F32 KV cache, no flash attention),
    with the LoRA adapter at `lora_path` applied at scale 1 when given."""
    from llama_cpp import Llama

    from wrinklefree_core.export import llamacpp_log

    llamacpp_log.install()
    return Llama(
        model_path=str(gguf_path),
        lora_path=None if lora_path is None else str(lora_path),
        lora_scale=1.0,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=max(1, min(2, os.cpu_count() or 1)),
        logits_all=True,
        type_k=0,
        type_v=0,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def llamacpp_version() -> dict[str, str]:
    """The llama-cpp-python version and the llama.cpp build's system info."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
        "system_info": info.decode() if isinstance(info, bytes) else str(info),
    }


def llamacpp_logits(llm, ids: list[int]) -> np.ndarray:
    """Evaluate `ids` from an empty context and return the logits of every position, (len(ids), vocab)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _write_json(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def _run_llama(
    gguf_path: Path, lora_path: Path | None, ids: list[int], cfg: ExportConfig, failures: list[str]
) -> LlamaRun:
    """llama.cpp's run of `ids` (logits, hidden states, its ids for the prompt); _LoadFailed if it refuses."""
    try:
        return run_llamacpp(
            gguf_path,
            ids,
            prompt=cfg.verify_prompt,
            lora_path=lora_path,
            threads=cfg.verify_threads or None,
            repack=cfg.verify_repack,
        )
    except RuntimeError as e:  # llama.cpp refused the file(s); its log says why
        raise _LoadFailed(str(e), failures) from e


def _check_logits(
    run: LlamaRun,
    model: nn.Module,
    tensors: dict[str, GGUFTensor],
    ids: torch.Tensor,
    exact: np.ndarray,
    cfg: ExportConfig,
    lora: dict[str, LoraPair] | None = None,
) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """llama.cpp's run vs the modelled reference: (json entries, failures, end-to-end reference logits).

    The gate is per layer (verify_layers.check_layers) plus the head's top-1 agreement; the end-to-end
    comparisons are reported beside it, since across kernel paths they measure amplified rounding
    flips as much as the export (module docstring).
    """
    got = run.logits
    ref = reference_logits(model, tensors, ids, lora=lora).numpy()
    ref_fp32 = reference_logits(model, tensors, ids, accumulate=torch.float32, lora=lora).numpy()
    vs_ref, vs_exact, ref_exact = compare_logits(got, ref), compare_logits(got, exact), compare_logits(ref, exact)
    floor = compare_logits(ref_fp32, ref)
    layers, failures = check_layers(run, model, tensors, ids, cfg.verify_max_rel_error, lora)
    head_top1 = layers.get("head", {}).get("top1_agreement", 0.0)
    if layers.get("layers_checked") and head_top1 < cfg.verify_min_top1:
        failures.append(f"output head: top-1 agreement with the reference {head_top1:.3f} < {cfg.verify_min_top1:.3f}")
    entries = {
        "kernel_path": run.path.to_json(),
        "layers": layers,
        "logit_scale": float(np.abs(exact).max()),
        "vs_reference": vs_ref,
        "vs_exact": vs_exact,
        "reference_vs_exact": ref_exact,
        "noise_floor": floor,
        "tolerance": {
            "configured_max_rel_error": cfg.verify_max_rel_error,
            "configured_min_top1": cfg.verify_min_top1,
            "noise_factor": NOISE_FACTOR,
            "rules": {
                "gate": "every layer and the head within layers.per_layer[].bound / layers.head.bound; "
                "head top-1 agreement >= configured_min_top1",
                "end_to_end": "vs_reference, vs_exact: reported, not gated (kernel-path rounding flips amplify)",
            },
        },
    }
    return entries, failures, ref


def _adapter_type_of(lora_path: Path) -> str:
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
    failures = []

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    required = ((Keys.General.TYPE, GGUFType.ADAPTER), (Keys.Adapter.TYPE, "lora"), (Keys.General.ARCHITECTURE, plan.arch))
    for key, want in required:
        if field(key) != want:
            failures.append(f"the LoRA adapter has {key} = {field(key)!r}, llama.cpp needs {want!r}")
    names = plan.by_tensor_name()
    present = {t.name: t for t in reader.tensors}
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
    if wrong_scale:
        failures.append(f"llama.cpp would scale U V^T by alpha/rank != 1 for {wrong_scale[:3]}")
    if wrong_values:
        failures.append(
            f"the LoRA factors of {sorted(set(wrong_values))[:3]} differ from the checkpoint's U, V "
            f"(max abs {worst:.3g}; U rows must carry the base weight's q/k permutation)"
        )
    summary["values_match_checkpoint"] = not wrong_values
    summary["max_abs_value_error"] = worst
    return summary, failures, pairs


def _file_widths(gguf_path: Path) -> dict[str, int] | None:
    """(n_embd, n_ff, n_head, n_head_kv) that a GGUF declares, None when it cannot be read."""
    try:
        reader = GGUFReader(str(gguf_path))
        arch = reader.fields[Keys.General.ARCHITECTURE].contents()
        keys = ("embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv")
        return {k: int(reader.fields[f"{arch}.{k}"].contents()) for k in keys}
    except Exception:  # unreadable or not ours: llama.cpp's load reports it below
        return None


def _widths(model: nn.Module) -> dict[str, int]:
    c = model.config
    return {
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
    }


def _model_for_file(gguf_path: Path, original: nn.Module, settings) -> ExportModel:
    """The checkpoint's model as the file holds it: padded when the file declares the padded widths."""
    arch = target_arch(original, settings)
    widths = _file_widths(gguf_path)
    if widths is None or widths == _widths(original) or not needs_padding(original):
        return ExportModel(original, original, settings)
    return export_model(original, settings, arch, pad=True)


# Float64 with float activations, padding redone in float64 (padding.identity_error). What is left is
# the fp32 rounding of the ternary scales that carry c (up/v_proj): <= 6e-8 relative on a SubLN's
# input, which the norm divides out except through eps: 2.8e-8 on SmolLM2, a few 1e-9 on the tiny
# test models. A wrong head map or gain moves the logits by 1e-2 or more. Epsilon mistakes are only
# (1 - r) eps / (2 mean square), ~1e-7 at eps 1e-6, below this bound: tests/export/test_padding.py
# catches them with eps raised to 0.05.
PADDING_MAX_REL_ERROR = 1e-6


def _check_padding(
    source: ExportModel, settings, ids: torch.Tensor, exact: np.ndarray
) -> tuple[dict[str, Any], list[str]]:
    """That the padded model is the checkpoint's model (whose logits are `exact`): exact ternary values
    and scales, the same function."""
    padded = source.padded
    identity = identity_error(source.original, settings, padded.plan, ids)
    with torch.no_grad():
        quantized = compare_logits(source.model(ids.view(1, -1)).logits[0].float().numpy(), exact)
    summary = {
        "plan": padded.plan.as_dict(),
        "ternary_matrices_exact": padded.ternary_checked,
        "scale_max_rel_error": padded.scale_max_rel_error,
        "identity_rel_error": identity,
        "identity_bound": PADDING_MAX_REL_ERROR,
        "quantized_vs_unpadded": quantized,
    }
    failures = []
    if not identity <= PADDING_MAX_REL_ERROR:
        failures.append(
            f"the padded model computes another function than the checkpoint (float64 logits differ by {identity:.3g} "
            f"> {PADDING_MAX_REL_ERROR:g}); export with pad=false and report this"
        )
    return summary, failures


def _run_checks(
    gguf_path: Path, checkpoint_dir: Path, cfg: ExportConfig, lora_path: Path | None = None
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    original, settings = load_bitnet_checkpoint(checkpoint_dir)
    has_lrc = bool(lrc_modules(original))
    if has_lrc and lora_path is None:
        raise VerificationError(
            f"{checkpoint_dir} has LRC adapters, so its GGUF is a base file plus a LoRA adapter, and no adapter was "
            f"given (none at {lora_path_for(gguf_path)} either). Pass lora_path=, or export with export_gguf."
        )
    if lora_path is not None and not has_lrc:
        raise VerificationError(f"{checkpoint_dir} has no LRC adapters, but a LoRA adapter ({lora_path}) was given.")
    plan_layout(original, settings, with_lora=has_lrc)
    source = _model_for_file(gguf_path, original, settings)
    model = source.model
    layout: GGUFLayout = plan_layout(model, source.settings, with_lora=has_lrc)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    hf_ids = list(tokenizer(cfg.verify_prompt).input_ids)
    ids = torch.tensor(hf_ids)

    with torch.no_grad():  # the checkpoint's own model: a padded file is compared with what it pads
        exact = original(ids.view(1, -1)).logits[0].float().numpy()

    failures: list[str] = []
    lora, extra = None, {}
    if source.padded is not None:
        extra["padding"], padding_failures = _check_padding(source, settings, ids, exact)
        failures += padding_failures
    if has_lrc:
        plan = plan_lora(model, layout, _adapter_type_of(lora_path))
        summary, lora_failures, lora = check_lora_file(lora_path, plan, model)
        failures += lora_failures
        extra["adapter"] = summary
        if lora is None:
            raise _LoadFailed("the LoRA adapter does not fit the checkpoint", failures, extra, attempted=False)
    try:
        run = _run_llama(gguf_path, lora_path, hf_ids, cfg, failures)
    except _LoadFailed as e:
        e.extra = extra
        raise
    ll_ids = run.prompt_ids
    if ll_ids != hf_ids:
        failures.append("llama.cpp tokenizes the prompt differently from the HF tokenizer")
    tensors = read_gguf_tensors(gguf_path, layout)
    extra["weights"], weight_failures = check_weights(tensors, model, layout)
    failures += weight_failures
    entries, logit_failures, ref = _check_logits(run, model, tensors, ids, exact, cfg, lora)
    failures += logit_failures

    if has_lrc:
        base_run = _run_llama(gguf_path, None, hf_ids, cfg, failures)
        with torch.no_grad(), lrc_disabled(original):
            base_exact = original(ids.view(1, -1)).logits[0].float().numpy()
        base_entries, base_failures, base_ref = _check_logits(base_run, model, tensors, ids, base_exact, cfg)
        failures += [f"base GGUF alone: {f}" for f in base_failures]
        effect = compare_logits(base_ref, ref)
        extra["base_alone"] = base_entries
        extra["adapter_effect"] = effect
        # Below the bounds the layer check cannot tell an applied adapter from a missing one.
        extra["adapter_effect_resolved"] = bool((entries["layers"].get("adapter_effect_margin") or 0.0) > 1.0)
        extra["llama_cpp_base_vs_base_with_adapter"] = compare_logits(base_run.logits, run.logits)

    return {
        "passed": not failures,
        "failures": failures,
        "arch": layout.arch,
        "prompt": cfg.verify_prompt,
        "tokens_compared": len(hf_ids),
        "tokens_match": ll_ids == hf_ids,
        "hf_token_ids": hf_ids,
        "llama_cpp_token_ids": ll_ids,
        **entries,
        **extra,
    }


def verify_gguf(
    gguf_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    cfg: ExportConfig,
    json_path: str | os.PathLike | None = None,
    published_name: str | None = None,
    lora_path: str | os.PathLike | None = None,
    published_lora_name: str | None = None,
    log_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check a GGUF against its checkpoint in llama.cpp; write the result as JSON; return it.

    For a checkpoint with LRC adapters the base GGUF is checked together with its LoRA adapter GGUF:
    `lora_path`, by default `<name>.lora.gguf` beside the base when that file exists (see the module
    docstring for the extra checks). The JSON goes to `json_path` (default: verification.json beside
    the GGUF), llama.cpp's log to `log_path` (default: llama_cpp.log beside the JSON). Raises VerificationError when a check fails or llama.cpp cannot load the file(s); the
    files themselves are kept.
    """
    gguf_path, checkpoint_dir = Path(gguf_path), Path(checkpoint_dir)
    if lora_path is None and lora_path_for(gguf_path).is_file() and checkpoint_has_lrc(checkpoint_dir):
        lora_path = lora_path_for(gguf_path)
    lora = None if lora_path is None else Path(lora_path)
    json_file = Path(json_path) if json_path else gguf_path.parent / VERIFICATION_NAME
    base: dict[str, Any] = {"gguf": published_name or gguf_path.name}
    if lora is not None:
        base["lora_gguf"] = published_lora_name or lora.name
    base["checkpoint"] = str(checkpoint_dir)
    log_file = Path(log_path) if log_path else json_file.parent / LLAMA_LOG_NAME
    base["llama_cpp_log"] = LLAMA_LOG_NAME if log_path else log_file.name
    try:
        log_file.unlink(missing_ok=True)  # this verification's log only
        with llamacpp_log_to(log_file):
            base["llama_cpp"] = llamacpp_version()
            result = {**base, **_run_checks(gguf_path, checkpoint_dir, cfg, lora)}
    except ImportError as e:
        raise VerificationError(
            f"llama-cpp-python is not installed ({e}); install it (pip install llama-cpp-python) or export with verify=false."
        ) from e
    except _LoadFailed as e:
        what = "the files" if lora is not None else "the file"
        failures = [*e.failures, f"llama.cpp could not run {what}: {e}"] if e.attempted else e.failures
        result = {**base, "passed": False, "failures": failures, **e.extra}
        _write_json(json_file, result)
        headline = f"llama.cpp could not run {what}" if e.attempted else str(e)
        raise VerificationError(
            f"{gguf_path}: {headline} ({'; '.join(failures)}). Details in {json_file}, llama.cpp's own log in {log_file}."
        ) from e
    _write_json(json_file, result)
    if not result["passed"]:
        raise VerificationError(
            f"{gguf_path} failed verification: {'; '.join(result['failures'])}. Details in {json_file}, "
            f"llama.cpp's own log in {log_file}."
        )
    return result


def _stale_adapter_note(out: Path) -> list[str]:
    stale = lora_path_for(out)
    if stale.exists():
        return [f"{stale} is left from an earlier export and does not belong to this file"]
    return []


def export_gguf(
    checkpoint_dir: str | os.PathLike, out_path: str | os.PathLike, cfg: ExportConfig, lora_type: str | None = None
) -> tuple[GGUFExportReport, dict[str, Any] | None]:
    """write_gguf, then (if cfg.verify) verify before publishing; return (report, verification or None).

    With verification the file, its verification.json and llama.cpp's log are written under staging
    names, checked in llama.cpp, and renamed to their real names only if the file passes. On failure
    nothing new is left at `out_path` and VerificationError is raised; the json and log that say why
    become verification.json / llama_cpp.log when no GGUF is published at `out_path`, and
    verification.failed.json / llama_cpp.failed.log when one is (that file and its own verification
    stay as they were).

    A checkpoint with LRC adapters becomes two files, the base at `out_path` and its LoRA adapter at
    lora_path_for(out_path) (`<name>.lora.gguf`, type `lora_type`, default cfg.lora_type), verified together
    and published together; `report.lora` describes the adapter.
    """
    out = Path(out_path)
    lora_out = lora_path_for(out) if checkpoint_has_lrc(checkpoint_dir) else None
    if not cfg.verify:
        if lora_out is not None:
            lora_report = write_lora_gguf(checkpoint_dir, out, lora_out, cfg, lora_type)
            report, report.lora = lora_report.base, lora_report
        else:
            report = write_gguf(checkpoint_dir, out, cfg)
            report.notes += _stale_adapter_note(out)
        for stale in (out.parent / VERIFICATION_NAME, out.parent / LLAMA_LOG_NAME):
            if stale.exists():  # it described the file just replaced
                stale.unlink()
                report.notes.append(f"removed {stale.name}: it described the file this export replaced, which was not verified")
        return report, None
    staged = {out: _staging(out), out.parent / VERIFICATION_NAME: _staging(out.parent / VERIFICATION_NAME)}
    staged[out.parent / LLAMA_LOG_NAME] = _staging(out.parent / LLAMA_LOG_NAME)
    if lora_out is not None:
        staged[lora_out] = _staging(lora_out)
    try:
        if lora_out is not None:
            lora_report = write_lora_gguf(checkpoint_dir, staged[out], staged[lora_out], cfg, lora_type)
            report, report.lora = lora_report.base, lora_report
        else:
            report = write_gguf(checkpoint_dir, staged[out], cfg)
        result = _verify_staged(checkpoint_dir, cfg, out, lora_out, staged)
        # The GGUF goes last: a file under the real name always has its own verification beside it.
        for final in sorted(staged, key=lambda f: f == out):
            if staged[final].exists():
                os.replace(staged[final], final)
        for old in (out.parent / FAILED_VERIFICATION_NAME, out.parent / FAILED_LOG_NAME):
            old.unlink(missing_ok=True)  # an earlier failed attempt's, superseded by this pass
    finally:
        for staging in staged.values():
            staging.unlink(missing_ok=True)
    report.path = out
    if lora_out is not None:
        report.lora.path = lora_out
    else:
        report.notes += _stale_adapter_note(out)
    return report, result


def _staging(final: Path) -> Path:
    """The name a file is written under until its export passes (storage/atomic.py cleans up after a crash)."""
    return final.parent / f".{final.name}.unverified-{os.getpid()}"


def _verify_staged(checkpoint_dir, cfg: ExportConfig, out: Path, lora_out: Path | None, staged: dict[Path, Path]) -> dict[str, Any]:
    """verify_gguf of the staged files; on failure its json and log move to where the user reads them."""
    json_final, log_final = out.parent / VERIFICATION_NAME, out.parent / LLAMA_LOG_NAME
    try:
        return verify_gguf(
            staged[out],
            checkpoint_dir,
            cfg,
            json_path=staged[json_final],
            log_path=staged[log_final],
            published_name=out.name,
            lora_path=staged[lora_out] if lora_out is not None else None,
            published_lora_name=lora_out.name if lora_out is not None else None,
        )
    except VerificationError as e:
        message = str(e).replace(str(staged[out]), str(out))
        if out.exists():  # a GGUF that passed before stays published, with its own verification.json
            json_final, log_final = out.parent / FAILED_VERIFICATION_NAME, out.parent / FAILED_LOG_NAME
            message += f" {out} and its {VERIFICATION_NAME} are the earlier export's, left as they were."
        for final, staging in ((json_final, staged[out.parent / VERIFICATION_NAME]), (log_final, staged[out.parent / LLAMA_LOG_NAME])):
            message = message.replace(str(staging), str(final))
            if staging.exists():
                os.replace(staging, final)
        if json_final.is_file() and log_final.name != LLAMA_LOG_NAME:
            record = json.loads(json_final.read_text(encoding="utf-8"))
            _write_json(json_final, {**record, "llama_cpp_log": log_final.name})
        raise VerificationError(message) from e
