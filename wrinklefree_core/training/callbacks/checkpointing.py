"""ResumableCheckpoint: every `training.checkpoint_every` steps and at the end, publish `OUT.state/checkpoints/last`.

What is written (layout and atomicity: training/run_state.py):
- `model/`: the student as a BitNet checkpoint folder (the runner's `write_model`, i.e.
  save_bitnet_checkpoint with the current settings, tokenizer and lambda);
- `trainer_state.pt`: Lightning's `trainer.save_checkpoint` minus the weights (optimizer, LR
  scheduler, loop counters, callback states, data mixture position; the train module adds lambda
  warmup, ZClip, the DLM generator and RNG states);
- `run.json`: the run's metadata plus the step.

Design choices:
- Saved in `on_train_batch_end`, after the optimizer, scheduler and lambda have all advanced, so the
  state is that of a step boundary. A step that the NaN guard stops never reaches this hook, so no
  checkpoint is ever written from a non-finite state.
- Every rank calls `write_model` and `trainer.save_checkpoint` (both are collectives for sharded
  strategies); only global rank 0 touches the filesystem, and the temp folder name depends only on
  the step.
- `last_step` is the step of the newest published checkpoint (restored by the runner on resume), so
  the end-of-training save is skipped when the last periodic save already covered the final step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from wrinklefree_core.training.run_state import MODEL_DIR, TRAINER_STATE, RunState, write_meta


class ResumableCheckpoint(Callback):
    """Writes the resumable checkpoint atomically (see the module docstring)."""

    def __init__(
        self,
        state: RunState,
        every: int,
        write_model: Callable[[Path], None],
        meta: Callable[[], dict[str, Any]],
        last_step: int | None = None,
    ):
        self.state = state
        self.every = every
        self.write_model = write_model
        self.meta = meta
        self.last_step = last_step

    def last_good(self) -> tuple[str, int] | None:
        """(folder, step) of the newest complete checkpoint, or None before the first one."""
        return (str(self.state.last), self.last_step) if self.last_step is not None else None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.last_step != trainer.global_step:
            self.save(trainer)

    def save(self, trainer: Trainer) -> Path:
        """Write the checkpoint of the current step and publish it as `last`."""
        step = trainer.global_step
        tmp = self.state.temp_path(step)
        if trainer.is_global_zero:
            self.state.temp_dir(step)
        self.write_model(tmp / MODEL_DIR)  # collective (gathers FSDP shards); only rank 0 writes
        trainer.save_checkpoint(tmp / TRAINER_STATE, weights_only=False)  # collective; only rank 0 writes
        if trainer.is_global_zero:
            write_meta(tmp, {**self.meta(), "step": step})
            self.state.publish(tmp, step)
        trainer.strategy.barrier("wrinklefree-checkpoint")
        self.last_step = step
        return self.state.last
