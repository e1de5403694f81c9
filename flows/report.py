"""The pipeline's evaluation table: printed, a Prefect table artifact, and MLflow artifacts + metrics.

One row per evaluated artifact (teacher, naive conversion, each training stage, the exported GGUF in
llama.cpp), one perplexity column per held-out source plus the token-weighted overall value. The
same rows go everywhere, so the log, the Prefect UI and MLflow never disagree.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact

from tasks import mlflow_runs


def table_rows(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows: label, runtime, per-source perplexity, overall perplexity, its ratio to the teacher's,
    cache flag, artifact URI.

    The ratio (student / full-precision teacher, overall perplexity) is the number recovery is judged
    by; it is left empty when the table has no teacher row.
    """
    teacher = next((e["perplexity"] for e in evals if e["label"] == "teacher"), None)
    rows = []
    for e in evals:
        row: dict[str, Any] = {"artifact": e["label"], "runtime": "llama.cpp" if e["kind"] == "gguf" else "torch"}
        for name, r in e["sources"].items():
            row[f"ppl {name}"] = round(r["perplexity"], 3)
        row["ppl"] = round(e["perplexity"], 3)
        row["x teacher"] = round(e["perplexity"] / teacher, 2) if teacher and math.isfinite(e["perplexity"]) else ""
        row["cached"] = bool(e.get("cached", False))
        row["uri"] = e["uri"]
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """A GitHub-style markdown table of `rows`."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def text(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table for logs and terminals (the URI column left out)."""
    cols = [c for c in rows[0] if c != "uri"] if rows else []
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def publish(
    rows: list[dict[str, Any]], evals: list[dict[str, Any]], tracking_uri: str | None, run_id: str | None
) -> str:
    """Print the table, save it as the Prefect table artifact `pipeline-eval`, and on the MLflow run."""
    shown = text(rows)
    print("held-out perplexity\n" + shown)
    create_table_artifact(rows, key="pipeline-eval", description="Held-out perplexity of every pipeline artifact")
    if run_id:
        client = mlflow_runs.client(tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "eval_table.md").write_text(markdown(rows) + "\n")
            (Path(tmp) / "eval.json").write_text(json.dumps(evals, indent=2) + "\n")
            client.log_artifact(run_id, str(Path(tmp) / "eval_table.md"))
            client.log_artifact(run_id, str(Path(tmp) / "eval.json"))
        metrics = {f"eval/{e['label']}/ppl": e["perplexity"] for e in evals if math.isfinite(e["perplexity"])}
        mlflow_runs.log_metrics(client, run_id, metrics)
    return shown
