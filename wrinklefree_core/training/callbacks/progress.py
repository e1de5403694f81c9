"""Progress of a training stage: a live bar on a terminal, a dated line with the ETA off one.

Design choices:
- On a terminal, one bar per stage (Lightning's rich bar, steps out of max_steps, since the training
  stream is endless and has no epoch length).
- Off a terminal (a log file, CI, a Prefect worker's log in the UI) a bar renders nothing useful: rich
  draws it only at the end and tqdm writes carriage returns. There `ProgressLog` writes one plain line
  after the first step, then at most every `every_s` seconds, and after the last step: step/max, loss,
  seconds per step and the ETA from the mean step time since the first step (the first one pays
  warm-up and would make the ETA pessimistic).
- Lines go to stderr through `print(..., flush=True)`: the stage's own output, never buffered.
- Only rank 0 writes; in a resumed run the count starts at the resumed step.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch import Callback, LightningModule, Trainer


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ProgressLog(Callback):
    """One line per `every_s` seconds: `<name>: step 40/140 (29%), loss 3.21, 4.1 s/step, ETA 6m50s`."""

    def __init__(self, name: str = "train", every_s: float = 60.0, stream=None):
        self.name = name
        self.every_s = every_s
        self.stream = stream
        self._first_step: int | None = None
        self._first_time = 0.0
        self._last_print = 0.0

    def _write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_rank != 0:
            return
        now, step, total = time.perf_counter(), trainer.global_step, trainer.max_steps
        if self._first_step is None:
            self._first_step, self._first_time, self._last_print = step, now, now
            self._write(f"{self.name}: step {step}/{total} done, timing the next steps for an ETA")
            return
        if now - self._last_print < self.every_s and step < total:
            return
        self._last_print = now
        per_step = (now - self._first_time) / max(1, step - self._first_step)
        loss = trainer.callback_metrics.get("loss")
        loss_text = f", loss {float(loss):.4g}" if loss is not None else ""
        eta = "done" if step >= total else f"ETA {_clock(per_step * (total - step))}"
        self._write(f"{self.name}: step {step}/{total} ({100 * step // max(1, total)}%){loss_text}, {per_step:.2f} s/step, {eta}")


def progress_callbacks(name: str = "train", interactive: bool | None = None) -> tuple[list[Callback], bool]:
    """(callbacks, enable_progress_bar) for a stage: the bar on a terminal, else ProgressLog."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    if not interactive:
        return [ProgressLog(name)], False
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    base = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar

    class StepProgressBar(base):
        """Shows steps out of max_steps (the training stream is endless, so there is no epoch length)."""

        @property
        def total_train_batches(self) -> int:
            return self.trainer.max_steps

        def _get_train_description(self, current_epoch: int) -> str:
            return name

    return [StepProgressBar()], True
