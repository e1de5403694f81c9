"""The `nightly-smoke` flow: the whole pipeline on tiny_llama with a tiny budget, recomputed every night.

It runs `full-pipeline` as a subflow with `smoke_params` (3 steps per training stage, 32-token rows,
8 held-out rows) and fails unless every stage produced its artifact, the GGUF passed its llama.cpp
verification, and every perplexity in the table is finite. `refresh` defaults to true: the point
is to exercise today's code, and the cache key tracks the package version, not every commit.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow

from flows.full_pipeline import full_pipeline
from flows.params import smoke_params
from tasks.stage_plan import STAGES


class SmokeCheckError(RuntimeError):
    """The smoke pipeline finished but its results are not what a healthy pipeline produces."""


def check_summary(summary: dict[str, Any]) -> list[str]:
    """Problems found in a pipeline summary (empty when healthy)."""
    problems = [f"stage {s} missing from the summary" for s in STAGES if s not in summary["stages"]]
    export = summary["stages"].get("export", {})
    if not export.get("metrics", {}).get("verify_tokens_compared"):
        problems.append("export: no llama.cpp verification recorded (export.verify must stay on for the smoke run)")
    for row in summary["eval"]:
        if not math.isfinite(row["ppl"]):
            problems.append(f"eval {row['artifact']}: perplexity {row['ppl']}")
    return problems


@flow(name="nightly-smoke", log_prints=True)
def nightly_smoke(out_root: str = "outputs/nightly", tracking_uri: str | None = None, refresh: bool = True) -> dict[str, Any]:
    """Run the smoke pipeline and check what it produced; raises SmokeCheckError on a bad result."""
    summary = full_pipeline(smoke_params(out_root=out_root, tracking_uri=tracking_uri, refresh=refresh))
    problems = check_summary(summary)
    if problems:
        raise SmokeCheckError("; ".join(problems))
    print(f"nightly smoke passed: {len(summary['eval'])} artifacts evaluated, GGUF at {summary['stages']['export']['uri']}")
    return summary


if __name__ == "__main__":
    nightly_smoke()
