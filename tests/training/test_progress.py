"""Off a terminal a training stage logs plain progress lines with an ETA; on one it shows a bar."""

from __future__ import annotations

import io
import re

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from wrinklefree_core.training.callbacks import ProgressLog, progress_callbacks


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch).pow(2).mean()
        self.log("loss", loss, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 4), batch_size=4)


def _fit(callback: ProgressLog, steps: int) -> list[str]:
    trainer = Trainer(
        max_steps=steps, callbacks=[callback], enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )
    trainer.fit(_Tiny())
    return callback.stream.getvalue().splitlines()


def test_every_interval_gives_a_line_with_loss_and_eta_and_the_last_step_says_done():
    lines = _fit(ProgressLog("distill", every_s=0.0, stream=io.StringIO()), steps=5)
    assert lines[0] == "distill: step 1/5 done, timing the next steps for an ETA"
    body = [re.fullmatch(r"distill: step (\d)/5 \((\d+)%\), loss [\d.e+-]+, [\d.]+ s/step, (ETA \d+m\d\ds|done)", ln) for ln in lines[1:]]
    assert all(body), lines
    assert [int(m.group(1)) for m in body] == [2, 3, 4, 5]
    assert [m.group(3) == "done" for m in body] == [False, False, False, True]


def test_a_long_interval_leaves_only_the_first_and_the_last_step():
    lines = _fit(ProgressLog("train", every_s=3600.0, stream=io.StringIO()), steps=6)
    assert len(lines) == 2 and lines[0].startswith("train: step 1/6") and lines[1].startswith("train: step 6/6 (100%)")


def test_terminal_gets_the_bar_and_a_pipe_gets_the_log():
    callbacks, bar = progress_callbacks("lrc", interactive=False)
    assert not bar and isinstance(callbacks[0], ProgressLog) and callbacks[0].every_s == 60.0
    callbacks, bar = progress_callbacks("lrc", interactive=True)
    assert bar and type(callbacks[0]).__name__ == "StepProgressBar"
