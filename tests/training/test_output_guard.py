"""A finished output is never replaced silently: other stages, other configs, a run's own input, an export beside a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.common import unified_run
from wrinklefree_core import cli
from wrinklefree_core.config import compose
from wrinklefree_core.stages.train import run_train


def train_args(converted_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *unified_run(converted_dir, out, 2, 100, "training.keep_state=false", *extra)]


@pytest.fixture()
def trained(converted_dir: Path, tmp_path: Path) -> Path:
    """A finished training output with no resumable state left (what the pipeline leaves)."""
    out = tmp_path / "trained"
    run_train(compose("train", train_args(converted_dir, out)[1:]))
    return out


def record(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text())


def test_convert_over_a_trained_checkpoint_needs_overwrite(teacher_dir: Path, trained: Path, capsys):
    before = (trained / "stage.json").read_bytes()
    assert cli.main(["convert", f"model={teacher_dir}", f"out={trained}"]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished train output" in err and "a train stage" in err and "overwrite=true" in err, err
    assert (trained / "stage.json").read_bytes() == before
    assert cli.main(["convert", f"model={teacher_dir}", f"out={trained}", "overwrite=true"]) == 0
    assert record(trained)["stage"] == "convert"


def test_train_over_another_configs_output_is_refused_and_an_identical_rerun_runs(converted_dir: Path, trained: Path, capsys):
    before = (trained / "model.safetensors").read_bytes()
    assert cli.main(train_args(converted_dir, trained, "training.optimizer.lr=1e-4")) == 2
    err = capsys.readouterr().err
    assert "different config (training.optimizer.lr)" in err and "Choose another out=" in err, err
    assert (trained / "model.safetensors").read_bytes() == before
    assert cli.main(train_args(converted_dir, trained)) == 0  # the same command again: recomputed in place
    assert record(trained)["config"]["training"]["optimizer"]["lr"] == 2e-3


def test_a_run_into_its_own_input_is_refused(converted_dir: Path, tmp_path: Path, capsys):
    before = (converted_dir / "stage.json").read_bytes()
    assert cli.main(train_args(converted_dir, converted_dir)) == 2
    assert "is this run's" in capsys.readouterr().err
    assert cli.main(train_args(converted_dir, converted_dir, "overwrite=true")) == 2  # not even when asked
    assert (converted_dir / "stage.json").read_bytes() == before


def test_an_export_never_writes_into_a_checkpoint_folder(trained: Path, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    for extra in ([], ["overwrite=true"]):
        assert cli.main(["export", f"checkpoint={trained}", "format=gguf", f"out={trained}/model.gguf", *extra]) == 2
        err = capsys.readouterr().err
        assert "holds a train output" in err and f"out={trained}-gguf/model.gguf" in err, err
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_an_output_under_a_file_is_refused_before_any_work(teacher_dir: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    assert cli.main(["convert", f"model={teacher_dir}", f"out={blocker}/converted"]) == 2
    assert f"{blocker} is a file" in capsys.readouterr().err
    assert cli.main(["convert", f"model={teacher_dir}", f"out={blocker}"]) == 2
    assert blocker.read_text() == "not a folder"
