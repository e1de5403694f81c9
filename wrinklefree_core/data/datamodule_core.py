"""From a `data` config to a training mixture and per-source validation sets (no Lightning here).

Each source goes through the same steps: resolve and read documents (documents.py), tokenize once
(cached, packing.py), split by document (split.py), pack each side into `seq_len` rows. The train
rows of all sources feed one `MixtureSampler` with the configured weights; validation rows stay per
source, so validation loss can be reported (and later used for remixing) source by source.
A Lightning DataModule, if any, only wraps this.
"""

from __future__ import annotations

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
        for side, idx in (("train", train_idx), ("validation", val_idx)):
            rows = pack_documents(tokens, idx, seq_len)
            if len(rows) == 0:
                n_tok = int(sum(tokens.offsets[i + 1] - tokens.offsets[i] for i in idx))
                raise DataSourceError(
                    f"source '{src.name}': its {side} documents hold {n_tok} tokens, fewer than one sequence of "
                    f"{seq_len}; use a larger source, a {'larger' if side == 'validation' else 'smaller'} "
                    f"data.val_fraction, or a shorter sequence length"
                )
            if side == "train":
                train[src.name] = rows
            else:
                val[src.name] = torch.from_numpy(rows.astype(np.int64))
    mixture = MixtureSampler(train, {s.name: s.weight for s in data_cfg.sources}, eos_id(tokenizer), seed=data_cfg.seed)
    return mixture, val
