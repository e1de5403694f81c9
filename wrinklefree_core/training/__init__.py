"""Training: the LightningModule that owns one optimizer step, the DataModule, callbacks, optimizers and the steps of a training stage.

- module.py: BitNetTrainModule (forwards, objectives, ZClip, lambda warmup; manual optimization).
- datamodule.py: batches from the data mixture, validation rows per source.
- callbacks/: one concern per file (resumable checkpoints, NaN guard, throughput).
- optimizers.py, schedule.py, zclip.py, qk_clip.py: optimizer, WSD schedule, adaptive clipping, QK-clip.
- resume.py, inputs.py, fit.py: the steps of stages/train.py (resume, models, Trainer and fit);
  evaluate.py: perplexity of token rows.

Importing this package stays cheap (no Lightning import here), so the CLI and errors.py can use it.
"""
