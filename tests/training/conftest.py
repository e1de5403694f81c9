"""Fixtures for the training-stage tests: one cache, a trained tiny teacher and its BitNet conversion.

- `training_env` (session, autouse, made by private_cache_env in tests/conftest.py): a private
  WRINKLEFREE_CACHE shared by the whole session, so the tiny model, its tokenizer, the Shakespeare
  token arrays and the MLflow sqlite store are built once; and one torch thread, in this process and
  (OMP_NUM_THREADS) in the CLI subprocesses. On a shared 2-core machine two OpenMP threads per
  process slow tiny-model steps down ~30x under load, and one thread everywhere also makes an
  in-process run and a subprocess run compute the same numbers.
- `teacher_dir` (session): tiny_llama trained in full precision for a few seconds on Shakespeare and
  saved as a plain HF folder. A random model's perplexity is ~vocab size before and after
  conversion, so distillation and "teacher beats the converted model" need a teacher that knows
  something.
- `converted_dir` (session): that teacher converted to BitNet by the convert stage; its stage.json
  names the teacher folder as `source_model`, which the training stages load as their teacher.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wrinklefree_core.config import compose
from wrinklefree_core.data.datamodule_core import build_datasets
from wrinklefree_core.models.sources import load_hf_model, materialize
from wrinklefree_core.stages.convert import run_convert

TEACHER_STEPS = 150


@pytest.fixture(scope="session", autouse=True)
def training_env(private_cache_env) -> Path:
    return private_cache_env("wrinklefree-cache")


@pytest.fixture(scope="session")
def teacher_dir(training_env: Path) -> Path:
    """A full-precision tiny_llama that has learned some Shakespeare (HF folder)."""
    folder = training_env / "teacher-tiny-llama"
    if (folder / "config.json").is_file():
        return folder
    cfg = compose("train", ["model=tiny_llama"])
    model, tokenizer = load_hf_model(materialize(cfg.model))
    mixture, _ = build_datasets(cfg.data, tokenizer, 64)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(TEACHER_STEPS):
        batch = mixture.sample(8)
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def converted_dir(teacher_dir: Path, training_env: Path) -> Path:
    """The teacher converted to BitNet (untrained), with stage.json naming the teacher."""
    out = training_env / "converted-teacher"
    if not (out / "stage.json").is_file():
        run_convert(compose("convert", [f"model={teacher_dir}", f"out={out}"]))
    return out
