"""LightningDataModule over `build_datasets`: training batches from the mixture, validation rows per source.

Design choices:
- One training batch = one optimizer step: `batch_size * grad_accumulation` rows, which the train
  module splits into micro-batches. Step counts, the data position and the checkpoint then line up
  one to one.
- Exact resume despite prefetching: Lightning fetches one batch ahead, so the sampler's own state
  is one batch past what training consumed. Each batch therefore carries the sampler state taken
  right after it was drawn; `on_before_batch_transfer` (run for the batch being consumed now, not
  the prefetched one) keeps it, and `state_dict()` returns it. Loading it makes the next draw the
  batch that follows the last one trained on.
- Data parallel: every rank draws the same global batch (world_size x rows) from an identically
  seeded sampler and keeps its own rows, so all ranks hold the same sampler state and rank 0's
  checkpoint is valid for all of them. Rank r's micro-batch i is the r-th slice of the global
  batch's micro-batch i, so the ranks together train on exactly the rows, micro-batch by
  micro-batch, that one process with a world_size times larger batch_size would.
- No DataLoader workers: drawing a batch is a few index lookups into packed token arrays in memory;
  a worker process would add latency and hide the sampler state from the main process.
- Validation: each source's held-out rows are one map-style DataLoader (at most
  `val_max_sequences` rows per source, the first ones, so every evaluation sees the same rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from wrinklefree_core.config.data import DataConfig
from wrinklefree_core.data.datamodule_core import build_datasets
from wrinklefree_core.data.mixture import MixtureSampler

DATA_STATE_KEY = "mixture_state"


class MixtureStream(IterableDataset):
    """Endless per-step batches from a MixtureSampler, each tagged with the sampler state after it."""

    def __init__(self, sampler: MixtureSampler, rows: int, rank: int = 0, world_size: int = 1, micro_batches: int = 1):
        self.sampler = sampler
        self.rows = rows
        self.rank = rank
        self.world_size = world_size
        self.micro_batches = micro_batches

    def rank_rows(self) -> torch.Tensor:
        """Indices of this rank's rows in the global batch (module docstring: data parallel)."""
        global_rows = torch.arange(self.rows * self.world_size)
        return global_rows.view(self.micro_batches, self.world_size, -1)[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        keep = self.rank_rows() if self.world_size > 1 else None
        while True:
            batch = self.sampler.sample(self.rows * self.world_size)
            if keep is not None:
                batch = {k: v[keep] for k, v in batch.items()}
            batch[DATA_STATE_KEY] = self.sampler.state_dict()
            yield batch


class BitNetDataModule(LightningDataModule):
    """Training batches from the weighted mixture of `data_cfg`'s sources; held-out rows for validation."""

    def __init__(
        self,
        data_cfg: DataConfig,
        tokenizer,
        seq_len: int,
        batch_size: int,
        grad_accumulation: int = 1,
        val_max_sequences: int | None = None,
    ):
        super().__init__()
        self.data_cfg = data_cfg
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.grad_accumulation = grad_accumulation
        self.val_max_sequences = val_max_sequences
        self.mixture: MixtureSampler | None = None
        self.val_sets: dict[str, torch.Tensor] = {}
        self._consumed: dict[str, Any] | None = None

    @property
    def rows_per_step(self) -> int:
        """Sequences per optimizer step on one device (all micro-batches)."""
        return self.batch_size * self.grad_accumulation

    @property
    def source_names(self) -> list[str]:
        """Validation sources in dataloader order."""
        return list(self.val_sets)

    def setup(self, stage: str | None = None) -> None:
        """Tokenize (cached), split and pack the sources once."""
        if self.mixture is None:
            self.mixture, val = build_datasets(self.data_cfg, self.tokenizer, self.seq_len)
            self.val_sets = {name: rows[: self.val_max_sequences] for name, rows in val.items()}

    def train_dataloader(self) -> DataLoader:
        """Per-step batches; batch_size=None because the stream already yields whole batches."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return DataLoader(MixtureStream(self.mixture, self.rows_per_step, rank, world, self.grad_accumulation), batch_size=None, num_workers=0)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader of held-out rows per source, in `source_names` order."""
        return [DataLoader(rows, batch_size=self.batch_size, shuffle=False) for rows in self.val_sets.values()]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Keep the sampler state of the batch being consumed (see the module docstring)."""
        if isinstance(batch, dict) and DATA_STATE_KEY in batch:
            self._consumed = batch.pop(DATA_STATE_KEY)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The mixture position right after the last consumed batch."""
        state = self._consumed if self._consumed is not None else self.mixture.state_dict()
        return {"mixture": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the mixture from a `state_dict()`."""
        self.setup()
        self.mixture.load_state_dict(state_dict["mixture"])
        self._consumed = state_dict["mixture"]
