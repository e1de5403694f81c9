"""The pipeline's value table: printed, a Prefect table artifact, and MLflow artifacts + metrics + a verdict tag.

One row per evaluated artifact (teacher, llama.cpp's quantization of it, naive conversion, each
training stage, the exported GGUF in llama.cpp); the rows and the verdict line come from
wrinklefree_core/evaluation/value_table.py, and the same rows go everywhere, so the log, the Prefect
UI and MLflow never disagree.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact

from tasks import mlflow_runs
from wrinklefree_core.evaluation.value_table import markdown, text

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
        client.set_tag(run_id, "eval.verdict", verdict)
    return shown
