"""The pipeline's value table: printed, a Prefect table artifact, MLflow artifacts + metrics + a verdict tag,
a chart of held-out perplexity through the stages, and the table on the exported model's registered version.

One row per evaluated artifact (teacher, llama.cpp's quantization of it, naive conversion, each
training stage, the exported GGUF in llama.cpp); the rows and the verdict line come from
wrinklefree_core/evaluation/value_table.py, and the same rows go everywhere, so the log, the Prefect
UI and MLflow never disagree.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact

from tasks import mlflow_runs
from wrinklefree_core.evaluation.value_table import markdown, text

NOTE_TAG = "mlflow.note.content"  # what MLflow's UI shows as a run's description
# MLflow metric name suffix -> (eval dict part, key) for the size and speed figures of GGUF rows.
_FIGURES = {
    "mib": ("size", "mib"),
    "bits_per_weight": ("size", "bits_per_weight"),
    "prompt_tps": ("speed", "prompt_tps"),
    "decode_tps": ("speed", "decode_tps"),
    "adapter_share": ("adapter", "adapter_share"),
}


def metrics_of(evals: list[dict[str, Any]]) -> dict[str, float]:
    """eval/<label>/ppl of every row, eval/<label>/{mib, bits_per_weight, prompt_tps, decode_tps} of GGUF rows, and
    eval/<label>/adapter_share of BitNet rows."""
    metrics: dict[str, float] = {}
    for e in evals:
        if math.isfinite(e["perplexity"]):
            metrics[f"eval/{e['label']}/ppl"] = e["perplexity"]
        for name, (part, key) in _FIGURES.items():
            value = (e.get(part) or {}).get(key)
            if value is not None and math.isfinite(value):
                metrics[f"eval/{e['label']}/{name}"] = float(value)
    return metrics


def log_eval_data(client, run_id: str, evals: list[dict[str, Any]]) -> None:
    """The held-out rows the table scores, as the pipeline run's dataset inputs (context `eval`).

    Every row is scored on the same rows; the first row that recorded them names them (results cached
    by an older version carry no record, and then there is nothing to log).
    """
    from wrinklefree_core.tracking.datasets import log_described

    described = next((e["datasets"] for e in evals if e.get("datasets")), None)
    if described:
        log_described(client, run_id, "eval", described)


def publish(
    rows: list[dict[str, Any]], evals: list[dict[str, Any]], verdict: str, tracking_uri: str | None, run_id: str | None
) -> str:
    """Print the table and verdict, save them as the Prefect table artifact `pipeline-eval`, and on the MLflow run."""
    shown = text(rows) + "\n" + verdict
    print("held-out perplexity, size and llama.cpp speed\n" + shown)
    create_table_artifact(rows, key="pipeline-eval", description=f"Held-out perplexity, size and speed of every pipeline artifact. {verdict}")
    if run_id:
        client = mlflow_runs.client(tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "eval_table.md").write_text(markdown(rows) + "\n\n" + verdict + "\n")
            (Path(tmp) / "eval.json").write_text(json.dumps({"evals": evals, "verdict": verdict}, indent=2) + "\n")
            client.log_artifact(run_id, str(Path(tmp) / "eval_table.md"))
            client.log_artifact(run_id, str(Path(tmp) / "eval.json"))
        mlflow_runs.log_metrics(client, run_id, metrics_of(evals))
        log_eval_data(client, run_id, evals)
        client.set_tag(run_id, "eval.verdict", verdict)
        client.set_tag(run_id, NOTE_TAG, f"{markdown(rows)}\n\n{verdict}\n")  # the run page's description
    return shown


def stage_series(evals: list[dict[str, Any]], stage_labels: list[str]) -> list[tuple[int, str, float]]:
    """(stage index, label, held-out perplexity) of the pipeline's stage rows, in pipeline order (finite ones only)."""
    by_label = {e["label"]: e for e in evals}
    series = []
    for index, label in enumerate(stage_labels):
        e = by_label.get(label)
        if e is not None and math.isfinite(e["perplexity"]):
            series.append((index, label, float(e["perplexity"])))
    return series


def stage_chart_png(evals: list[dict[str, Any]], stage_labels: list[str], path: Path) -> Path | None:
    """Held-out perplexity through the stages (teacher and llama.cpp's quantizations as lines), beside size on disk."""
    series = stage_series(evals, stage_labels)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, (ppl_ax, size_ax) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    ppl_ax.plot([i for i, _, _ in series], [p for _, _, p in series], marker="o", label="pipeline stages")
    reference = [e for e in evals if e["label"] == "teacher" or e.get("baseline")]
    for e, style in zip(reference, ("-", "--", ":", "-.", (0, (1, 3)))):
        if math.isfinite(e["perplexity"]):
            ppl_ax.axhline(e["perplexity"], color="grey", linestyle=style, linewidth=1, label=e["label"])
    ppl_ax.set_xticks([i for i, _, _ in series], [label for _, label, _ in series], rotation=20)
    ppl_ax.set_yscale("log")
    ppl_ax.set_ylabel("held-out perplexity")
    ppl_ax.grid(alpha=0.3)
    ppl_ax.legend(fontsize=8)
    sized = [e for e in evals if e.get("size")]
    size_ax.barh([e["label"] for e in sized], [e["size"]["mib"] for e in sized], color="tab:blue")
    size_ax.set_xlabel("MiB on disk (adapter counted)")
    for y, e in enumerate(sized):
        size_ax.text(e["size"]["mib"], y, f" {e['size']['bits_per_weight']:.2f} bpw", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def publish_stage_chart(evals: list[dict[str, Any]], stage_labels: list[str], tracking_uri: str | None, run_id: str) -> None:
    """On the pipeline run: `pipeline/heldout_ppl` (and `pipeline/ppl_x_teacher`) over stage index, and the chart as a PNG."""
    from mlflow.entities import Metric

    client = mlflow_runs.client(tracking_uri)
    teacher = next((e["perplexity"] for e in evals if e["label"] == "teacher"), None)
    now = int(time.time() * 1000)
    metrics = []
    for index, _, ppl in stage_series(evals, stage_labels):
        metrics.append(Metric("pipeline/heldout_ppl", ppl, now, index))
        if teacher and math.isfinite(teacher):
            metrics.append(Metric("pipeline/ppl_x_teacher", ppl / teacher, now, index))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        png = stage_chart_png(evals, stage_labels, Path(tmp) / "heldout_ppl_by_stage.png")
        if png is not None:
            client.log_artifact(run_id, str(png))


def describe_model_version(
    rows: list[dict[str, Any]], verdict_line: str, export_label: str, tracking_uri: str | None, export_run_id: str
) -> str | None:
    """Put the eval table and verdict on the model version the export run registered; returns "name/version" or None."""
    from mlflow.exceptions import MlflowException

    from wrinklefree_core.tracking.model_registry import VERSION_TAG, describe_version

    client = mlflow_runs.client(tracking_uri)
    try:
        known = client.get_run(export_run_id).data.tags.get(VERSION_TAG)
    except MlflowException:  # a cached export whose run lives in another store
        return None
    if not known:
        return None
    name, _, version = known.rpartition("/")
    ours = next((r for r in rows if r["artifact"] == export_label), {})
    tags = {"eval.verdict": verdict_line}
    if ours.get("x teacher") not in (None, ""):
        tags["ppl_x_teacher"] = str(ours["x teacher"])
    if ours.get("MiB") not in (None, ""):
        tags["mib_with_adapter"] = str(ours["MiB"])
    description = f"Held-out perplexity, size and llama.cpp speed (this export: `{export_label}`)\n\n{markdown(rows)}\n\n{verdict_line}\n"
    describe_version(client, name, version, description, tags)
    return known
