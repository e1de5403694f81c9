"""The NaN guard: a non-finite loss or gradient stops the run with a clear error naming the step, exits
non-zero, and leaves the last good checkpoint intact; nothing is written from the bad state."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training.common import SMALL, run_of
from wrinklefree_core import cli
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.training.module import BitNetTrainModule
from wrinklefree_core.training.run_state import MODEL_DIR, TRAINER_STATE, RunState

FAIL_AT = 7  # 1-based optimizer step whose loss becomes NaN
EVERY = 2


def test_injected_nan_loss_stops_before_the_step(converted_dir: Path, tmp_path: Path, monkeypatch, capsys):
    original = BitNetTrainModule.micro_step_loss

    def poisoned(self, batch, step, needs):
        out = original(self, batch, step, needs)
        if step == FAIL_AT - 1:  # `step` counts completed steps
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BitNetTrainModule, "micro_step_loss", poisoned)
    out = tmp_path / "out"
    args = ["train", f"model={converted_dir}", "training=stage2_pretrain", "training.max_steps=12", f"training.checkpoint_every={EVERY}", *SMALL, f"out={out}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    state = RunState(out)
    assert f"training diverged at optimizer step {FAIL_AT}: the loss is nan" in err
    last_good = (FAIL_AT - 1) // EVERY * EVERY
    assert f"Last good checkpoint: {state.last} (step {last_good})" in err

    # The last good checkpoint is the one from before the failure, complete and loadable.
    assert state.has_checkpoint() and state.leftovers() == []
    assert state.read_meta()["step"] == last_good
    model, _ = load_bitnet_checkpoint(state.last / MODEL_DIR)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.load(state.last / TRAINER_STATE, weights_only=False)["global_step"] == last_good
    assert not out.exists(), "no final checkpoint from a diverged run"
    assert run_of(out).info.status == "FAILED"


def test_exploding_learning_rate_is_caught(converted_dir: Path, tmp_path: Path, capsys):
    """The real thing, no injection: an absurd learning rate blows the weights up within two steps."""
    out = tmp_path / "out"
    args = [
        "train", f"model={converted_dir}", "training=stage2_pretrain", "training.max_steps=10", "training.checkpoint_every=1",
        "training.optimizer.lr=1e30", *SMALL, f"out={out}",
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "training diverged at optimizer step" in err
    step = int(err.split("training diverged at optimizer step ")[1].split(":")[0])
    state = RunState(out)
    assert state.has_checkpoint() and state.read_meta()["step"] == step - 1
    load_bitnet_checkpoint(state.last / MODEL_DIR)
    assert state.leftovers() == [] and not out.exists()
