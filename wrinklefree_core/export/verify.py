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
float rounding changes (fp32 accumulation; where that flips nothing, one flip forced per quantizer), fed
the same inputs, at its largest over the layers (verify_layers.py); the configured tolerance applies
on top of NOISE_FACTOR floors, and the json records every floor and bound used, and the kernel path
that ran (`kernel_path`: CPU, threads, repacked or not, features).

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
against the PyTorch LRC model, plus the adapter file itself (verify_lora.py), the base file alone vs
the reference without adapters (its own floor and bounds), and `adapter_effect`: how far the
adapters move the modelled logits (`adapter_effect_resolved`: false, not a failure, when that is
below the tolerance, since a U = 0 adapter is a valid export).
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
from torch import nn

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export.gguf_layout import GGUFLayout, plan_layout
from wrinklefree_core.export.gguf_lora import checkpoint_has_lrc, lora_path_for, plan_lora, write_lora_gguf
from wrinklefree_core.export.gguf_report import GGUFExportReport
from wrinklefree_core.export.gguf_writer import write_gguf
from wrinklefree_core.export.llamacpp_api import compare_logits, llamacpp_version
from wrinklefree_core.export.llamacpp_log import llamacpp_log_to
from wrinklefree_core.export.llamacpp_reference import GGUFTensor, LoraPair, lrc_disabled, read_gguf_tensors, reference_logits
from wrinklefree_core.export.llamacpp_run import LlamaRun, run_llamacpp
from wrinklefree_core.export.verify_layers import NOISE_FACTOR, check_layers
from wrinklefree_core.export.verify_lora import adapter_type_of, check_lora_file
from wrinklefree_core.export.verify_padding import check_padding, model_for_file
from wrinklefree_core.export.verify_weights import check_weights
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.models.lrc import lrc_modules
from wrinklefree_core.storage.atomic import atomic_write_text

VERIFICATION_NAME = "verification.json"
LLAMA_LOG_NAME = "llama_cpp.log"  # llama.cpp's own log of the verification, beside the json
# A re-export that fails beside a published GGUF: its record, leaving that file's own verification alone.
FAILED_VERIFICATION_NAME, FAILED_LOG_NAME = "verification.failed.json", "llama_cpp.failed.log"


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


def _prepare(gguf_path: Path, checkpoint_dir: Path, cfg: ExportConfig, lora_path: Path | None):
    """(the checkpoint's model, the model the file holds, its layout, HF prompt ids, exact logits, has LRC)."""
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
    source = model_for_file(gguf_path, original, settings)
    layout: GGUFLayout = plan_layout(source.model, source.settings, with_lora=has_lrc)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    hf_ids = list(tokenizer(cfg.verify_prompt).input_ids)
    with torch.no_grad():  # the checkpoint's own model: a padded file is compared with what it pads
        exact = original(torch.tensor(hf_ids).view(1, -1)).logits[0].float().numpy()
    return original, settings, source, layout, hf_ids, exact, has_lrc


def _run_checks(gguf_path: Path, checkpoint_dir: Path, cfg: ExportConfig, lora_path: Path | None = None) -> dict[str, Any]:
    original, settings, source, layout, hf_ids, exact, has_lrc = _prepare(gguf_path, checkpoint_dir, cfg, lora_path)
    model, ids = source.model, torch.tensor(hf_ids)
    failures: list[str] = []
    lora, extra = None, {}
    if source.padded is not None:
        extra["padding"], padding_failures = check_padding(source, settings, ids, exact)
        failures += padding_failures
    if has_lrc:
        summary, lora_failures, lora = check_lora_file(lora_path, plan_lora(model, layout, adapter_type_of(lora_path)), model)
        failures += lora_failures
        extra["adapter"] = summary
        if lora is None:
            raise _LoadFailed("the LoRA adapter does not fit the checkpoint", failures, extra, attempted=False)
    try:
        run = _run_llama(gguf_path, lora_path, hf_ids, cfg, failures)
    except _LoadFailed as e:
        e.extra = extra
        raise
    if run.prompt_ids != hf_ids:
        failures.append("llama.cpp tokenizes the prompt differently from the HF tokenizer")
    tensors = read_gguf_tensors(gguf_path, layout)
    extra["weights"], weight_failures = check_weights(tensors, model, layout)
    failures += weight_failures
    entries, logit_failures, ref = _check_logits(run, model, tensors, ids, exact, cfg, lora)
    failures += logit_failures
    if has_lrc:
        failures += _check_base_alone(gguf_path, original, model, tensors, hf_ids, cfg, run, entries, ref, extra)
    return {
        "passed": not failures,
        "failures": failures,
        "arch": layout.arch,
        "prompt": cfg.verify_prompt,
        "tokens_compared": len(hf_ids),
        "tokens_match": run.prompt_ids == hf_ids,
        "hf_token_ids": hf_ids,
        "llama_cpp_token_ids": run.prompt_ids,
        **entries,
        **extra,
    }


def _check_base_alone(gguf_path, original, model, tensors, hf_ids, cfg, run, entries, ref, extra) -> list[str]:
    """The base file alone against the model without its corrections, and how far the adapters move the logits (into `extra`)."""
    failures: list[str] = []
    ids = torch.tensor(hf_ids)
    base_run = _run_llama(gguf_path, None, hf_ids, cfg, failures)
    with torch.no_grad(), lrc_disabled(original):
        base_exact = original(ids.view(1, -1)).logits[0].float().numpy()
    base_entries, base_failures, base_ref = _check_logits(base_run, model, tensors, ids, base_exact, cfg)
    failures += [f"base GGUF alone: {f}" for f in base_failures]
    extra["base_alone"] = base_entries
    extra["adapter_effect"] = compare_logits(base_ref, ref)
    # Below the bounds the layer check cannot tell an applied adapter from a missing one.
    extra["adapter_effect_resolved"] = bool((entries["layers"].get("adapter_effect_margin") or 0.0) > 1.0)
    extra["llama_cpp_base_vs_base_with_adapter"] = compare_logits(base_run.logits, run.logits)
    return failures


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
