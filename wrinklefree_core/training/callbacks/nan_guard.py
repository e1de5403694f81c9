"""NaNGuard: stop the run at the first non-finite loss or gradient, before that step changes anything.

Design choices:
- Checked in `on_before_optimizer_step`: the step's backward is done (all micro-batches, DDP
  all-reduce included) but the optimizer has not updated the weights, and callbacks run before the
  train module's own hook (ZClip). Raising there leaves the weights, optimizer and schedules at
  the last finite step, and the checkpoint callback, which saves in `on_train_batch_end`, never sees
  the bad step: no checkpoint is written from a non-finite state.
- The error names the failing optimizer step (1-based, the number of steps that would have been
  completed), what went non-finite (the loss and its parts, or the first parameters with non-finite
  gradients), and the last good checkpoint that `training.resume=auto` continues from.
- Under FSDP a rank holds gradient shards: finiteness is all-reduced (grad_norm.py), so every rank
  raises at the same step instead of one waiting for the others in the next collective. The names
  in the message are those this rank's shards show (under FSDP possibly none on a given rank).
- Cost: one host sync per step for a fused all-finite check over every gradient; ZClip syncs
  for the gradient norm anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from wrinklefree_core.training.errors import TrainingDivergedError
from wrinklefree_core.training.grad_norm import grads_all_finite, local_values

_MAX_NAMES = 5


class NaNGuard(Callback):
    """Raises TrainingDivergedError on a non-finite loss or gradient (see the module docstring)."""

    def __init__(self, last_good: Callable[[], tuple[str, int] | None] = lambda: None):
        self.last_good = last_good

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        loss = getattr(pl_module, "last_loss", None)
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        # Every rank enters this check (an all-reduce under FSDP), so all of them stop together.
        grads_finite = grads_all_finite([g for _, g in named])
        problem = None
        if loss is not None and not bool(torch.isfinite(loss)):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in getattr(pl_module, "last_parts", {}).items())
            problem = f"the loss is {float(loss)}" + (f" (parts: {parts})" if parts else "")
        elif not grads_finite:
            bad = [n for n, g in named if not bool(torch.isfinite(local_values(g)).all())]
            more = f" and {len(bad) - _MAX_NAMES} more" if len(bad) > _MAX_NAMES else ""
            problem = f"gradients are non-finite in {bad[:_MAX_NAMES]}{more} (loss {float(loss) if loss is not None else 'n/a'})"
        if problem is not None:
            raise self._error(trainer.global_step + 1, problem)

    def _error(self, step: int, problem: str) -> TrainingDivergedError:
        last = self.last_good()
        if last is None:
            where = "No checkpoint had been written yet, so a re-run starts from the beginning."
        else:
            where = (
                f"Last good checkpoint: {last[0]} (step {last[1]}); re-running the same command "
                "(training.resume=auto) continues from it."
            )
        message = (
            f"training diverged at optimizer step {step}: {problem}. The run stopped before applying this step, "
            f"and no checkpoint was written from it. {where} Lower training.optimizer.lr or training.grad_clip, "
            "or lengthen training.schedule.warmup_fraction."
        )
        return TrainingDivergedError(message, step, last[0] if last else None, last[1] if last else None)
