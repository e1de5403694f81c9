"""Errors a training run reports to the user (the CLI prints them as one line and exits 2).

Kept free of torch/Lightning imports so that `wrinklefree_core.errors` can list them without making
every CLI command pay for importing the training stack.
"""

from __future__ import annotations


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became inf/nan; the run stopped before the optimizer applied that step.

    `step` is the optimizer step (1-based) that failed; `last_checkpoint` the folder of the last good
    resumable checkpoint (None when none was written yet) and `last_step` its step.
    """

    def __init__(self, message: str, step: int, last_checkpoint: str | None = None, last_step: int | None = None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint
        self.last_step = last_step


class ResumeError(ValueError):
    """A resumable checkpoint exists but cannot be continued with this config (the message says why)."""


class TeacherError(ValueError):
    """A recipe needs a teacher, and none was given or found (the message says how to pass one)."""
