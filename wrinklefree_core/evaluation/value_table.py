"""The value table: every artifact's held-out perplexity beside its size and llama.cpp speed, and a verdict.

One row per evaluated artifact (`evals`: the dicts perplexity.evaluate_local returns, plus `label`,
`uri`, and for a GGUF `size` (size.gguf_size) and `speed` (speed.measure_speed); a baseline row
carries `baseline`, its llama.cpp type). Columns: perplexity per source and overall, its ratio to
the full-precision teacher's, the LRC adapter's parameters as a percentage of the projection
parameters (`adapter`, BitNet rows only: quality bought with full-precision bits shows beside the
perplexity it bought), then MiB on disk (adapter counted), bits per weight, prompt and decode tok/s.
PyTorch rows leave the GGUF columns empty: they are not what ships.

The verdict compares one GGUF (the pipeline's export) with every llama.cpp baseline on size (MiB),
speed (decode tok/s, what a user of a small CPU model waits for) and perplexity; it beats a row on
an axis only when strictly better. It is one line, printed under the table, kept in MLflow and in
the Prefect artifact's description, so no view of the numbers lacks the conclusion.
"""

from __future__ import annotations

import math
from typing import Any

def table_rows(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows: label, runtime, per-source perplexity, overall perplexity, its ratio to the teacher's,
    adapter %,
    MiB, bits/weight, prompt and decode tok/s, cache flag, artifact URI.

    The ratio (artifact / full-precision teacher, overall perplexity) is the number recovery is judged
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
        adapter = e.get("adapter")
        row["adapter %"] = round(100 * adapter["adapter_share"], 2) if adapter else ""
        size, speed = e.get("size"), e.get("speed")
        row["MiB"] = round(size["mib"], 2) if size else ""
        row["bits/weight"] = round(size["bits_per_weight"], 2) if size else ""
        row["prompt tok/s"] = round(speed["prompt_tps"], 1) if speed else ""
        row["decode tok/s"] = round(speed["decode_tps"], 1) if speed else ""
        if any("cached" in x for x in evals):  # a pipeline's table says which rows a cache answered
            row["cached"] = bool(e.get("cached", False))
        row["uri"] = e["uri"]
        rows.append(row)
    return rows


def _ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else math.inf


def verdict(evals: list[dict[str, Any]], subject: str) -> str:
    """One line: which baseline rows the `subject` row beats on size, speed and perplexity, and which not."""
    ours = next((e for e in evals if e["label"] == subject), None)
    baselines = [e for e in evals if e.get("baseline")]
    if ours is None or not ours.get("size") or not baselines:
        return f"verdict: no llama.cpp baseline to compare {subject} with (eval.baselines is empty or the teacher is unknown)"
    clauses, all_three = [], []
    for b in baselines:
        axes = [("smaller", "larger", _ratio(ours["size"]["bytes"], b["size"]["bytes"]), True, "size")]
        if ours.get("speed") and b.get("speed"):
            axes.append(("faster", "slower", _ratio(ours["speed"]["decode_tps"], b["speed"]["decode_tps"]), False, "decode"))
        axes.append(("better", "worse", _ratio(ours["perplexity"], b["perplexity"]), True, "perplexity"))
        parts, wins = [], 0
        for good, bad, ratio, lower_wins, name in axes:
            won = ratio < 1 if lower_wins else ratio > 1
            wins += won
            parts.append(f"{good if won else bad} {name} {ratio:.2f}x")
        if wins == 3:
            all_three.append(b["label"])
        clauses.append(f"vs {b['label']}: " + ", ".join(parts))
    speed_note = "" if ours.get("speed") else " (speed not measured)"
    overall = f"beats {', '.join(all_three)} on size, speed and perplexity together" if all_three else (
        "beats no baseline on size, speed and perplexity together"
    )
    return f"verdict: {subject} {overall}{speed_note}; " + "; ".join(clauses)


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
