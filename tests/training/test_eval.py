"""`wrinklefree eval`: held-out perplexity per source, for a BitNet checkpoint and for a plain HF folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

from wrinklefree_core import cli

ARGS = ["training.seq_len=64", "training.batch_size=16", "data.val_fraction=0.01"]


def eval_json(path: Path, capsys) -> dict:
    assert cli.main(["eval", f"checkpoint={path}", *ARGS, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_teacher_beats_the_untrained_conversion(teacher_dir: Path, converted_dir: Path, capsys):
    teacher = eval_json(teacher_dir, capsys)
    converted = eval_json(converted_dir, capsys)
    assert (teacher["kind"], converted["kind"]) == ("hf", "bitnet")
    t, c = teacher["sources"]["shakespeare"], converted["sources"]["shakespeare"]
    assert t["tokens"] == c["tokens"] > 0, "both are scored on the same held-out rows"
    assert math.isclose(t["perplexity"], math.exp(t["loss"]), rel_tol=1e-9)
    assert t["perplexity"] < c["perplexity"], (t, c)


def test_max_sequences_scores_only_the_first_rows(converted_dir: Path, capsys):
    every = eval_json(converted_dir, capsys)["sources"]["shakespeare"]
    assert cli.main(["eval", f"checkpoint={converted_dir}", *ARGS, "eval.max_sequences=2", "--json"]) == 0
    two = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sources"]["shakespeare"]
    assert two["tokens"] == 2 * (64 - 1) < every["tokens"]


def test_eval_prints_perplexity_per_source(converted_dir: Path, tmp_path: Path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(4):
        (notes / f"note{i}.txt").write_text(" ".join(f"Note {i}, line {j}: the quick brown fox jumps." for j in range(60)))
    sources = f"data.sources=[{{name: shakespeare, path: 'package:shakespeare'}}, {{name: notes, path: '{notes}'}}]"
    assert cli.main(["eval", f"checkpoint={converted_dir}", sources, *ARGS]) == 0
    printed = capsys.readouterr().out
    for source in ("shakespeare", "notes"):
        assert f"  {source}: perplexity " in printed, printed


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys):
    assert cli.main(["eval", f"checkpoint={tmp_path / 'nope'}", *ARGS]) == 2
    assert "does not exist" in capsys.readouterr().err
