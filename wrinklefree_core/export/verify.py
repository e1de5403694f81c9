"""Run an exported GGUF in llama.cpp and check it against PyTorch: tokens and logits.

Checks, all on `cfg.verify_prompt`:
- llama.cpp's own tokenizer (from the GGUF metadata) gives the same ids as the checkpoint's HF tokenizer;
- llama.cpp's logits at every position vs the modelled reference (llamacpp_reference: the GGUF's
  weights, llama.cpp's activation rounding): relative L2 error <= verify_max_rel_error and top-1
  agreement >= verify_min_top1, both *above the model's noise floor*;
- vs the exact PyTorch model, with a derived bound: llama.cpp may differ from it by no more than the
  modelled reference does, plus the tolerance vs the reference (triangle inequality). Any larger gap
  means the reference misses something llama.cpp does, which would make the tight check meaningless.

The noise floor is how far the reference moves from itself when only its float rounding changes
(fp32 instead of fp64 accumulation). Each int8/Q8 activation quantizer turns a last-bit difference
into a whole step when a value sits on a rounding boundary, and a deep model can amplify that step:
the tiny test models have floors of 1e-7 to 4e-4 (relative L2), the naively converted (untrained)
30-layer SmolLM2 ~2%, while llama.cpp agrees with the float64 reference to 1e-7 to 2e-5 on the former.
No implementation can be checked more tightly than that, llama.cpp included, so the configured
tolerances apply on top of NOISE_FACTOR floors; the json records the floor and every bound used.

Design choices:
- llama.cpp runs with an F32 KV cache, no flash attention and logits for all positions, so the only
  deliberate differences from PyTorch are the ones the reference models.
- The outcome is written to `verification.json` beside the GGUF (written atomically), pass or fail.
- Failure policy: `verify_gguf` on its own raises VerificationError and leaves the file it was given
  alone (it is the caller's file; the json says "passed": false). `export_gguf` writes the new file
  under a staging name, verifies that, and publishes it under the real name only when it passes; on
  failure the staging file is deleted and an existing file at the real name is left untouched. A file
  under the expected name is therefore always one that passed (a user who wants to inspect a failing
  export can rerun with export.verify=false).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export.gguf_layout import plan_layout
from wrinklefree_core.export.gguf_writer import GGUFExportReport, write_gguf
from wrinklefree_core.export.llamacpp_reference import read_gguf_tensors, reference_logits
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint

VERIFICATION_NAME = "verification.json"
# How many noise floors of disagreement llama.cpp may add (its fp32 rounding is independent of ours).
NOISE_FACTOR = 2.0


class VerificationError(RuntimeError):
    """The GGUF does not reproduce the checkpoint in llama.cpp within tolerance (details in verification.json)."""


class _LoadFailed(Exception):
    """llama.cpp could not load or run the file."""


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


def load_llama(gguf_path: str | Path, n_ctx: int):
    """Open a GGUF in llama.cpp the way verification needs it (all logits, F32 KV cache, no flash attention)."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(gguf_path),
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
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _run_checks(gguf_path: Path, checkpoint_dir: Path, cfg: ExportConfig) -> dict[str, Any]:
    from transformers import AutoTokenizer

    model, settings = load_bitnet_checkpoint(checkpoint_dir)
    layout = plan_layout(model, settings)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    hf_ids = list(tokenizer(cfg.verify_prompt).input_ids)
    try:
        llm = load_llama(gguf_path, n_ctx=max(256, len(hf_ids) + 16))
    except ValueError as e:  # llama-cpp-python's way of saying llama.cpp refused the file
        raise _LoadFailed(str(e)) from e

    try:
        ll_ids = list(llm.tokenize(cfg.verify_prompt.encode("utf-8"), add_bos=True, special=True))
        # Logits are compared on the HF ids either way, so a tokenizer mismatch still shows the numbers.
        got = llamacpp_logits(llm, hf_ids)
    finally:
        llm.close()
    ids = torch.tensor(hf_ids)
    tensors = read_gguf_tensors(gguf_path, layout)
    ref = reference_logits(model, tensors, ids).numpy()
    ref_fp32 = reference_logits(model, tensors, ids, accumulate=torch.float32).numpy()
    with torch.no_grad():
        exact = model(ids.view(1, -1)).logits[0].float().numpy()

    vs_ref, vs_exact, ref_exact = compare_logits(got, ref), compare_logits(got, exact), compare_logits(ref, exact)
    floor = compare_logits(ref_fp32, ref)
    max_rel = cfg.verify_max_rel_error + NOISE_FACTOR * floor["rel_l2_error"]
    min_top1 = cfg.verify_min_top1 - NOISE_FACTOR * (1.0 - floor["top1_agreement"])
    exact_bound = ref_exact["rel_l2_error"] + max_rel
    failures = []
    if ll_ids != hf_ids:
        failures.append("llama.cpp tokenizes the prompt differently from the HF tokenizer")
    if vs_ref["rel_l2_error"] > max_rel:
        failures.append(f"relative L2 error vs the modelled reference {vs_ref['rel_l2_error']:.3g} > {max_rel:.3g}")
    if vs_ref["top1_agreement"] < min_top1:
        failures.append(f"top-1 agreement vs the modelled reference {vs_ref['top1_agreement']:.3f} < {min_top1:.3f}")
    if vs_exact["rel_l2_error"] > exact_bound:
        failures.append(
            f"relative L2 error vs the exact model {vs_exact['rel_l2_error']:.3g} > derived bound {exact_bound:.3g}"
        )
    return {
        "passed": not failures,
        "failures": failures,
        "arch": layout.arch,
        "prompt": cfg.verify_prompt,
        "tokens_compared": len(hf_ids),
        "tokens_match": ll_ids == hf_ids,
        "hf_token_ids": hf_ids,
        "llama_cpp_token_ids": ll_ids,
        "logit_scale": float(np.abs(exact).max()),
        "vs_reference": vs_ref,
        "vs_exact": vs_exact,
        "reference_vs_exact": ref_exact,
        "noise_floor": floor,
        "tolerance": {
            "configured_max_rel_error": cfg.verify_max_rel_error,
            "configured_min_top1": cfg.verify_min_top1,
            "noise_factor": NOISE_FACTOR,
            "max_rel_error_vs_reference": max_rel,
            "min_top1_vs_reference": min_top1,
            "max_rel_error_vs_exact": exact_bound,
            "rules": {
                "max_rel_error_vs_reference": "configured_max_rel_error + noise_factor * noise_floor.rel_l2_error",
                "min_top1_vs_reference": "configured_min_top1 - noise_factor * (1 - noise_floor.top1_agreement)",
                "max_rel_error_vs_exact": "reference_vs_exact.rel_l2_error + max_rel_error_vs_reference",
            },
        },
    }


def verify_gguf(
    gguf_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    cfg: ExportConfig,
    json_path: str | os.PathLike | None = None,
    published_name: str | None = None,
) -> dict[str, Any]:
    """Check a GGUF against its checkpoint in llama.cpp; write the result as JSON; return it.

    The JSON goes to `json_path` (default: verification.json beside the GGUF). Raises
    VerificationError when a check fails or llama.cpp cannot load the file; the file itself is kept.
    """
    gguf_path, checkpoint_dir = Path(gguf_path), Path(checkpoint_dir)
    json_file = Path(json_path) if json_path else gguf_path.parent / VERIFICATION_NAME
    base = {"gguf": published_name or gguf_path.name, "checkpoint": str(checkpoint_dir)}
    try:
        base["llama_cpp"] = llamacpp_version()
        result = {**base, **_run_checks(gguf_path, checkpoint_dir, cfg)}
    except ImportError as e:
        raise VerificationError(
            f"llama-cpp-python is not installed ({e}); install it (pip install llama-cpp-python) or export with verify=false."
        ) from e
    except _LoadFailed as e:
        result = {**base, "passed": False, "failures": [f"llama.cpp could not run the file: {e}"]}
        _write_json(json_file, result)
        raise VerificationError(f"{gguf_path}: llama.cpp could not run the file ({e}). Details in {json_file}.") from e
    _write_json(json_file, result)
    if not result["passed"]:
        raise VerificationError(f"{gguf_path} failed verification: {'; '.join(result['failures'])}. Details in {json_file}.")
    return result


def export_gguf(
    checkpoint_dir: str | os.PathLike, out_path: str | os.PathLike, cfg: ExportConfig
) -> tuple[GGUFExportReport, dict[str, Any] | None]:
    """write_gguf, then (if cfg.verify) verify before publishing; return (report, verification or None).

    With verification the file is written under a staging name, checked in llama.cpp, and renamed to
    `out_path` only if it passes; on failure nothing new is left at `out_path` and VerificationError
    is raised (verification.json beside `out_path` says why).
    """
    out = Path(out_path)
    if not cfg.verify:
        return write_gguf(checkpoint_dir, out, cfg), None
    staging = out.parent / f".{out.name}.unverified-{os.getpid()}"
    try:
        report = write_gguf(checkpoint_dir, staging, cfg)
        result = verify_gguf(staging, checkpoint_dir, cfg, json_path=out.parent / VERIFICATION_NAME, published_name=out.name)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    report.path = out
    return report, result
