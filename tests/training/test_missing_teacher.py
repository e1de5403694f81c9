"""A distillation whose teacher is missing says which teacher and what to pass, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from wrinklefree_core import cli

ARGS = ["training=bitdistill_full", "training.max_steps=2", "training.seq_len=32", "training.batch_size=2"]


def test_a_teacher_that_is_not_there_is_named(converted_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "distilled"
    assert cli.main(["train", f"model={converted_dir}", f"teacher={tmp_path / 'nope'}", f"out={out}", *ARGS]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert f"teacher={tmp_path / 'nope'} is neither a folder nor a model config name" in line, line
    assert not out.exists()


def test_a_source_model_gone_from_this_machine_asks_for_teacher(converted_dir: Path, tmp_path: Path, capsys):
    moved = tmp_path / "checkpoint"
    shutil.copytree(converted_dir, moved)
    manifest = json.loads((moved / "stage.json").read_text())
    manifest["inputs"]["source_model"] = str(tmp_path / "gone")
    (moved / "stage.json").write_text(json.dumps(manifest))
    out = tmp_path / "distilled"
    assert cli.main(["train", f"model={moved}", f"out={out}", *ARGS]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert f"the teacher {tmp_path / 'gone'} (source_model in the input's stage.json) does not exist here; pass teacher=DIR" in line, line
    assert not out.exists()
