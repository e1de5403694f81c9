"""The value table and its verdict, on rows whose numbers are known (no model runs here)."""

from __future__ import annotations

import math

from wrinklefree_core.evaluation.value_table import markdown, table_rows, text, verdict


def _row(label, ppl, mib=None, decode=None, baseline=None, kind="gguf"):
    e = {"label": label, "kind": kind, "uri": f"/x/{label}", "perplexity": ppl, "sources": {"a": {"perplexity": ppl}}}
    if mib is not None:
        e["size"] = {"bytes": mib * 2**20, "mib": mib, "bits_per_weight": mib * 8 * 2**20 / 1e8}
    if decode is not None:
        e["speed"] = {"prompt_tps": 10 * decode, "decode_tps": decode}
    if baseline:
        e["baseline"] = baseline
    return e


def _table():
    return [
        _row("teacher", 20.0, kind="hf"),
        _row("teacher-f16", 20.1, mib=258.0, decode=80.0, baseline="f16"),
        _row("teacher-q4_0", 25.0, mib=87.5, decode=140.0, baseline="q4_0"),
        _row("export-gguf", 30.0, mib=60.0, decode=150.0),
    ]


def test_rows_carry_size_and_speed_of_gguf_rows_only():
    rows = table_rows(_table())
    by = {r["artifact"]: r for r in rows}
    assert by["teacher"]["MiB"] == "" and by["teacher"]["decode tok/s"] == "" and by["teacher"]["runtime"] == "torch"
    assert by["export-gguf"]["MiB"] == 60.0 and by["export-gguf"]["decode tok/s"] == 150.0
    assert by["export-gguf"]["prompt tok/s"] == 1500.0 and by["export-gguf"]["bits/weight"] == round(60 * 8 * 2**20 / 1e8, 2)
    assert by["export-gguf"]["x teacher"] == 1.5 and by["teacher-f16"]["x teacher"] == 1.01
    assert by["export-gguf"]["adapter %"] == "" and table_rows([{**_table()[3], "adapter": {"adapter_share": 0.0937}}])[0]["adapter %"] == 9.37
    assert "cached" not in by["teacher"]  # only a pipeline's rows (which carry the flag) get the column
    assert "cached" in table_rows([{**e, "cached": True} for e in _table()])[0]
    assert "| export-gguf | llama.cpp |" in markdown(rows)
    assert "uri" not in text(rows).splitlines()[0]


def test_verdict_names_what_is_beaten_and_what_is_not():
    line = verdict(_table(), "export-gguf")
    assert line.startswith("verdict: export-gguf beats no baseline on size, speed and perplexity together; ")
    assert "vs teacher-f16: smaller size 0.23x, faster decode 1.88x, worse perplexity 1.49x" in line
    assert "vs teacher-q4_0: smaller size 0.69x, faster decode 1.07x, worse perplexity 1.20x" in line
    assert "\n" not in line


def test_verdict_names_a_row_beaten_on_all_three():
    evals = _table()
    evals[-1]["perplexity"] = 24.0
    line = verdict(evals, "export-gguf")
    assert "beats teacher-q4_0 on size, speed and perplexity together" in line
    assert "vs teacher-q4_0: smaller size 0.69x, faster decode 1.07x, better perplexity 0.96x" in line


def test_a_tie_is_not_a_win():
    evals = _table()
    evals[-1].update(size=dict(evals[2]["size"]), speed=dict(evals[2]["speed"]), perplexity=25.0)
    line = verdict(evals, "export-gguf")
    assert "vs teacher-q4_0: larger size 1.00x, slower decode 1.00x, worse perplexity 1.00x" in line


def test_verdict_without_speed_or_baselines_says_so():
    evals = _table()
    for e in evals:
        e.pop("speed", None)
    line = verdict(evals, "export-gguf")
    assert "(speed not measured)" in line and "decode" not in line
    assert "no llama.cpp baseline" in verdict([e for e in evals if not e.get("baseline")], "export-gguf")
    diverged = _table()
    diverged[-1]["perplexity"] = math.inf
    assert "worse perplexity inf" in verdict(diverged, "export-gguf")
