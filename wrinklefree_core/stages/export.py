"""The export stage: BitNet checkpoint -> a GGUF file for llama.cpp, or an HF folder for transformers.

GGUF: written, run in llama.cpp and compared with PyTorch before it is published under its name
(`export.verify=false` skips that); `verification.json` and `stage.json` land beside the file, so give
each export its own folder (the default is `outputs/<checkpoint>-gguf/<checkpoint>.gguf`).
HF: a folder that stock `transformers.AutoModelForCausalLM.from_pretrained` loads; stage.json inside.
`checkpoint=` and `out=` may be gs:// URIs (artifacts/io.py): for a GGUF the folder holding the file is
what is uploaded, with its completion marker written last.
"""

from __future__ import annotations

import time
from pathlib import Path

from wrinklefree_core.artifacts.io import OutputTarget, local_path, plan_output
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, build_manifest, manifest_json, source_model_name
from wrinklefree_core.artifacts.result import StageResult
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages.base import Section, Stage, register
from wrinklefree_core.storage.atomic import atomic_write_text, remove_dead_leftovers
from wrinklefree_core.storage.locks import output_lock
from wrinklefree_core.tracking.params import RUN_FIELDS
from wrinklefree_core.tracking.stage_run import now_ms, record_stage_run
from wrinklefree_core.tracking.store import check_store


REPORT_NAME = "export_report.txt"  # every tensor's type, shape and bytes, beside the GGUF


def default_out(cfg: RunConfig) -> Path:
    """Where the export goes when `out=` is not given."""
    name = Path(cfg.checkpoint.rstrip("/")).name
    if cfg.export.format == "gguf":
        return Path("outputs") / f"{name}-gguf" / f"{name}.gguf"
    return Path("outputs") / f"{name}-hf"


def run_export(cfg: RunConfig) -> StageResult:
    """Export `cfg.checkpoint` per `cfg.export`; the result's summary is the human-readable report."""
    from wrinklefree_core.models.checkpoint import CheckpointError

    if not cfg.checkpoint:
        raise CheckpointError("export needs checkpoint=DIR (a folder written by `wrinklefree convert` or a training stage)")
    target = plan_output(cfg, default_out(cfg), is_file=cfg.export.format == "gguf")
    with output_lock(target.folder, "export", enabled=not target.mounted):
        return _export(cfg, target)


def _export(cfg: RunConfig, target: OutputTarget) -> StageResult:
    from wrinklefree_core.artifacts.output_guard import check_output

    start = time.perf_counter()
    started_ms = now_ms()
    out = target.local
    if target.remote is None or target.mounted:
        check_output("export", cfg, out, {"input checkpoint": cfg.checkpoint}, is_file=cfg.export.format == "gguf")
        if cfg.export.format == "gguf":
            for leftover in remove_dead_leftovers(out.parent):
                print(f"removed {leftover.name}, left by an export that crashed", flush=True)
    check_store(cfg)
    checkpoint = local_path(cfg.checkpoint, cfg.gcs)
    if cfg.export.format == "gguf":
        metrics, summary = _export_gguf(checkpoint, out, cfg)
        manifest_folder = out.parent
    else:
        from wrinklefree_core.export.hf_export import export_hf

        report = export_hf(checkpoint, out, cfg.export)
        metrics = {"total_bytes": report.total_bytes, "packed": float(report.packed)}
        summary = f"wrote HF BitNet folder {out} ({report.total_bytes / 2**20:.1f} MiB, packed={report.packed})"
        manifest_folder = out
    metrics["export_seconds"] = time.perf_counter() - start
    manifest = build_manifest("export", cfg.model_dump(mode="json"), {"checkpoint": str(cfg.checkpoint)}, metrics)
    atomic_write_text(manifest_folder / MANIFEST_NAME, manifest_json(manifest))
    uri = target.publish(cfg.gcs)
    if uri != str(out):
        summary += f"\npublished to {uri}"
    result = StageResult(out=out, metrics=metrics, uri=uri, summary=summary)
    model_name = source_model_name(checkpoint, cfg.model.name)
    record_stage_run(cfg, STAGE.tracked, target.uri, manifest_folder, metrics, started_ms, model_name=model_name)
    return result


def _export_gguf(checkpoint: Path, out: Path, cfg: RunConfig) -> tuple[dict[str, float], str]:
    """Write and verify the GGUF; its metrics and the summary a person reads."""
    from wrinklefree_core.export.gguf_report import format_report, format_summary
    from wrinklefree_core.export.verify import VERIFICATION_NAME, export_gguf

    metrics: dict[str, float] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    report, verification = export_gguf(checkpoint, out, cfg.export)
    # The per-tensor table (hundreds of rows) goes to a file of the export's own; the terminal gets the summary.
    table = out.parent / REPORT_NAME
    table.write_text(format_report(report) + "\n", encoding="utf-8")
    summary = format_summary(report) + f"\n  per-tensor table: {table}"
    metrics.update(file_bytes=report.file_bytes, f16_bytes=report.f16_bytes, size_vs_f16=report.file_bytes / report.f16_bytes)
    # What a user ships is base + adapter; bits per weight divide it by the checkpoint's weights (padding not counted).
    lora_bytes = report.lora.file_bytes if report.lora is not None else 0
    metrics.update(lora_bytes=lora_bytes, total_bytes=report.file_bytes + lora_bytes, weights=report.weights)
    metrics["bits_per_weight"] = 8 * metrics["total_bytes"] / max(1, report.weights)
    if verification is not None:
        for key, value in verification.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"verify_{key}"] = float(value)
        layers, kernel = verification["layers"], verification["kernel_path"]
        worst = layers["worst_layer"]
        metrics["verify_worst_layer_rel_error"] = float(worst["rel_error"])
        metrics["verify_layer_bound"] = float(layers["bound"])
        metrics["verify_head_top1"] = float(layers["head"]["top1_agreement"])
        metrics["verify_passed"] = float(bool(verification.get("passed")))
        metrics["verify_top1_agreement"] = float(verification["vs_reference"]["top1_agreement"])
        metrics["verify_exact_top1_agreement"] = float(verification["vs_exact"]["top1_agreement"])
        summary += (
            f"\n  verified in llama.cpp: passed, every layer within {layers['bound']:.2g} of its update "
            f"(worst {worst['rel_error']:.2g}, layer {worst['layer']}) on {kernel['threads']} thread(s), "
            f"{'repacked' if kernel['repacked'] else 'plain'} weights; details in {out.parent / VERIFICATION_NAME}"
        )
    return metrics, summary


STAGE = register(
    Stage(
        name="export",
        summary="BitNet checkpoint -> GGUF verified in llama.cpp (export.format=hf: an HF folder)",
        command="export",
        run=run_export,
        position=50,
        logs=("model.name", "export", "compute", "gcs", *RUN_FIELDS),
        artifact_file=lambda cfg: f"{cfg.model.name}.gguf" if cfg.export.format == "gguf" else None,
        sections=(
            Section("export", "Export format, GGUF types and the llama.cpp verification."),
            Section("compute", "Where the stage runs (backend, device, precision, SkyPilot resources)."),
        ),
        usage="checkpoint=DIR format=gguf|hf out=FILE.gguf|DIR (GGUF verified in llama.cpp)",
        announce=lambda cfg: f"exporting {cfg.checkpoint} as {cfg.export.format} ...",
        report=lambda result: f"{result.summary}\nwrote {result.location}",
    )
)
