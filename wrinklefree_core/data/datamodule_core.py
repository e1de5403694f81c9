"""From a `data` config to a training mixture and per-source validation sets (no Lightning here).

Each source goes through the same steps: resolve and read documents (documents.py), tokenize once
(cached, packing.py), split by document (split.py), pack each side into `seq_len` rows. The train
rows of all sources feed one `MixtureSampler` with the configured weights; validation rows stay per
source, so validation loss can be reported (and later used for remixing) source by source.
A Lightning DataModule, if any, only wraps this.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from wrinklefree_core.config.data import DataConfig
from wrinklefree_core.data.documents import DataSourceError, resolve_source
from wrinklefree_core.data.mixture import MixtureSampler
from wrinklefree_core.data.packing import eos_id, load_tokens, pack_documents
from wrinklefree_core.data.split import split_indices


def build_datasets(data_cfg: DataConfig, tokenizer, seq_len: int) -> tuple[MixtureSampler, dict[str, torch.Tensor]]:
    """Build (train mixture, {source name: int64 tensor [n_val, seq_len]}) for `data_cfg`.

    Raises DataSourceError when a source is missing, cannot be split, or packs into no full sequence.
    """
    names = [s.name for s in data_cfg.sources]
    if len(set(names)) != len(names):
        raise DataSourceError(f"data source names must be unique, got {names}")
    train: dict[str, np.ndarray] = {}
    val: dict[str, torch.Tensor] = {}
    for src in data_cfg.sources:
        tokens = load_tokens(resolve_source(src.path), tokenizer)
        train_idx, val_idx = split_indices(tokens.n_documents, data_cfg.val_fraction, data_cfg.seed, name=f"source '{src.name}'")
        train[src.name] = _packed(src.name, "train", tokens, train_idx, seq_len)
        val[src.name] = torch.from_numpy(_packed(src.name, "validation", tokens, val_idx, seq_len).astype(np.int64))
    mixture = MixtureSampler(train, {s.name: s.weight for s in data_cfg.sources}, eos_id(tokenizer), seed=data_cfg.seed)
    return mixture, val


def scored_sets(data_cfg: DataConfig, tokenizer, seq_len: int, whole: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """{source name: int64 rows [n, seq_len]} to score: every document of the sources named in `whole`,
    the held-out split (the rows `build_datasets` validates on) of the others.

    A whole source needs no split, so a single document is enough; its last partial row is not scored.
    """
    rows: dict[str, torch.Tensor] = {}
    for src in data_cfg.sources:
        tokens = load_tokens(resolve_source(src.path), tokenizer)
        if src.name in whole:
            idx = np.arange(tokens.n_documents, dtype=np.int64)
            side = "documents"
        else:
            try:
                _, idx = split_indices(tokens.n_documents, data_cfg.val_fraction, data_cfg.seed, name=f"source '{src.name}'")
            except DataSourceError as exc:
                raise DataSourceError(f"{exc} To score all of it instead, pass eval.split=all.") from None
            side = "validation"
        rows[src.name] = torch.from_numpy(_packed(src.name, side, tokens, idx, seq_len).astype(np.int64))
    return rows


def _packed(name: str, side: str, tokens, idx: np.ndarray, seq_len: int) -> np.ndarray:
    """`pack_documents` of one side of a source; no full row is an error that says what to change."""
    rows = pack_documents(tokens, idx, seq_len)
    if len(rows) == 0:
        n_tok = int(sum(tokens.offsets[i + 1] - tokens.offsets[i] for i in idx))
        fix = {"train": "a smaller data.val_fraction, ", "validation": "a larger data.val_fraction, "}.get(side, "")
        raise DataSourceError(
            f"source '{name}': its {side} documents hold {n_tok} tokens, fewer than one sequence of "
            f"{seq_len}; use a larger source, {fix}or a shorter sequence length (training.seq_len)"
        )
    return rows
