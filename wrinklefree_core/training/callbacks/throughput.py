"""Throughput: tokens trained on and tokens per second, logged every step.

Design choices:
- A token is one position of an input row: rows per step (all micro-batches) x seq_len x world size.
  The DLM and teacher forwards are extra work on the same tokens and are not counted again.
- tokens/s is measured between consecutive step ends (the first step from the start of training),
  so it includes data loading, logging and the optimizer, i.e. what a run really gets; the first
  step also pays one-time warm-up (allocations, compilation) and reads low.
- The running token count is callback state: Lightning saves it in the trainer state, so a resumed
  run keeps counting from where it stopped.
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class Throughput(Callback):
    """Logs `throughput/tokens` (total) and `throughput/tokens_per_s` (last step)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.tokens = 0
        self._last_time: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_time = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        step_tokens = batch["input_ids"].shape[0] * self.seq_len * trainer.world_size
        self.tokens += step_tokens
        elapsed = now - (self._last_time or now)
        self._last_time = now
        metrics = {"throughput/tokens": float(self.tokens)}
        if elapsed > 0:
            metrics["throughput/tokens_per_s"] = step_tokens / elapsed
        # Straight to the loggers, before the checkpoint callback (listed after this one) saves the step.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens = int(state_dict["tokens"])
