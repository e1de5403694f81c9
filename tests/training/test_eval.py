"""`wrinklefree eval`: perplexity per source, for a BitNet checkpoint and for a plain HF folder; which rows it scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

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


def _one_document(path: Path) -> Path:
    """A small text file with no blank line: one document, which cannot be split into train and held-out."""
    path.write_text(" ".join(f"Line {j}: the quick brown fox jumps over the lazy dog." for j in range(80)))
    return path


def test_one_text_file_is_scored_whole(converted_dir: Path, tmp_path: Path, capsys):
    from transformers import AutoTokenizer

    from wrinklefree_core.training.evaluate import evaluate_perplexity, load_for_eval

    text_file = _one_document(tmp_path / "dump.txt")
    assert cli.main(["eval", f"checkpoint={converted_dir}", f"data={text_file}", *ARGS, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sources"]["dump"]
    assert scored["split"] == "all"

    # Reference: the file tokenized on its own, EOS at the end, cut into full rows of 64.
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    ids = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n_rows = len(ids) // 64
    assert n_rows >= 3
    rows = torch.tensor(ids[: n_rows * 64]).reshape(n_rows, 64)
    model, _, _ = load_for_eval(converted_dir)
    reference = evaluate_perplexity(model, {"dump": rows}, batch_size=16, eos_token_id=tokenizer.eos_token_id)["dump"]
    assert scored["tokens"] == reference["tokens"] == n_rows * 63
    assert math.isclose(scored["loss"], reference["loss"], rel_tol=1e-6)

    assert cli.main(["eval", f"checkpoint={converted_dir}", f"data={text_file}", *ARGS]) == 0
    assert f"over {n_rows * 63:,} tokens, all its documents" in capsys.readouterr().out


def test_heldout_split_of_one_document_names_the_fix(converted_dir: Path, tmp_path: Path, capsys):
    text_file = _one_document(tmp_path / "dump.txt")
    assert cli.main(["eval", f"checkpoint={converted_dir}", f"data={text_file}", "eval.split=heldout", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2" in err and "eval.split=all" in err, err


def test_data_the_checkpoint_was_calibrated_on_keeps_its_heldout_split(teacher_dir: Path, tmp_path: Path, capsys):
    from wrinklefree_core.config import compose
    from wrinklefree_core.stages.convert import run_convert

    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    for folder in (seen, unseen):
        folder.mkdir()
        for i in range(6):
            (folder / f"doc{i}.txt").write_text(" ".join(f"{folder.name} {i}, line {j}: the quick brown fox." for j in range(40)))
    checkpoint = tmp_path / "converted-on-seen"
    run_convert(compose("convert", [f"model={teacher_dir}", f"data={seen}", f"out={checkpoint}"]))

    for folder, split in ((seen, "heldout"), (unseen, "all")):
        assert cli.main(["eval", f"checkpoint={checkpoint}", f"data={folder}", "training.seq_len=64", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sources"][folder.name]
        assert result["split"] == split, (folder, result)
    # The teacher (an HF folder, no stage.json) has seen neither: the bundled corpus stays held-out.
    assert cli.main(["eval", f"checkpoint={teacher_dir}", *ARGS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sources"]["shakespeare"]["split"] == "heldout"
