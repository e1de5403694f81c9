"""One GGUF beside the user's alternative: `wrinklefree eval checkpoint=FILE.gguf`.

    teacher (PyTorch) | teacher-f16, -q4_0, -q2_k (llama.cpp's quantizer) | the GGUF (+ adapter)
    each: held-out perplexity on the same rows; the GGUFs: MiB, bits/weight, tok/s timed together;
    BitNet rows: LRC adapter parameters as a share of the projection parameters

The teacher is `teacher=` when given, else the source model of the checkpoint the GGUF was exported
from (the stage.json chain). The pipeline builds the same table from cached Prefect tasks
(flows/full_pipeline.py); both use these functions, so the numbers mean the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.evaluation.adapter import adapter_share
from wrinklefree_core.evaluation.perplexity import evaluate_local, gguf_source_checkpoint
from wrinklefree_core.evaluation.scored_split import whole_sources
from wrinklefree_core.evaluation.ptq import baseline_label, ptq_files
from wrinklefree_core.evaluation.size import gguf_size
from wrinklefree_core.evaluation.speed import measure_speed
from wrinklefree_core.artifacts.manifest import read_manifest


def teacher_of(gguf: Path, cfg: RunConfig) -> Path:
    """The full-precision teacher to compare `gguf` with: `teacher=`, else the exported checkpoint's source model."""
    from wrinklefree_core.training.inputs import teacher_path

    inputs = read_manifest(gguf_source_checkpoint(gguf)).inputs if not cfg.teacher else {}
    return teacher_path(cfg, inputs)


def add_sizes(evals: list[dict[str, Any]]) -> None:
    """Attach `size` to every GGUF row (in place)."""
    for e in evals:
        if e["kind"] == "gguf":
            e["size"] = gguf_size(e["path"])


def add_adapters(evals: list[dict[str, Any]]) -> None:
    """Attach `adapter` (adapter.adapter_share) to every BitNet checkpoint row and every GGUF exported from one (in place)."""
    for e in evals:
        path = Path(e["path"])
        if e["kind"] == "gguf":
            try:
                path = gguf_source_checkpoint(path)
            except FileNotFoundError:
                continue
        share = adapter_share(path)
        if share is not None:
            e["adapter"] = share


def speed_files(evals: list[dict[str, Any]]) -> dict[str, tuple[Path, Path | None]]:
    """{label: (GGUF, its LoRA adapter or None)} of every GGUF row: what the timing run loads."""
    from wrinklefree_core.export.gguf_lora import lora_path_for

    files = {}
    for e in evals:
        if e["kind"] == "gguf":
            lora = lora_path_for(e["path"])
            files[e["label"]] = (Path(e["path"]), lora if lora.is_file() else None)
    return files


def attach_speeds(evals: list[dict[str, Any]], speeds: dict[str, dict[str, Any]]) -> None:
    """Put each row's timing under `speed` (in place)."""
    for e in evals:
        if e["label"] in speeds:
            e["speed"] = speeds[e["label"]]


def add_speeds(evals: list[dict[str, Any]], cfg: RunConfig) -> None:
    """Time every GGUF row in one run and attach `speed` (in place); nothing when eval.speed is off."""
    files = speed_files(evals)
    if cfg.eval.speed.enabled and files:
        attach_speeds(evals, measure_speed(files, cfg.eval.speed))


def _scored(label: str, path: Path, cfg: RunConfig, whole: frozenset[str], **extra: Any) -> dict[str, Any]:
    result = evaluate_local(path, cfg, cfg.eval.max_sequences, whole)
    result.update(label=label, uri=str(path), path=str(path), **extra)
    return result


def compare_gguf(gguf: str | Path, cfg: RunConfig, label: str | None = None) -> list[dict[str, Any]]:
    """Rows for the value table: the teacher, its llama.cpp baselines (cfg.eval.baselines), then `gguf`."""
    gguf = Path(gguf)
    teacher = teacher_of(gguf, cfg)
    whole = whole_sources(cfg, gguf_source_checkpoint(gguf))  # one set of rows for every row of the table
    evals = [_scored("teacher", teacher, cfg, whole)]
    for ptq_type, path in ptq_files(teacher, list(cfg.eval.baselines)).items():
        evals.append(_scored(baseline_label(ptq_type), path, cfg, whole, baseline=ptq_type))
    evals.append(_scored(label or gguf.name, gguf, cfg, whole))
    add_sizes(evals)
    add_adapters(evals)
    add_speeds(evals, cfg)
    return evals
