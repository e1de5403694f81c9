"""Deterministic held-out split of a source's documents into train and validation.

Design choices:
- The split is by document, never inside one, so no validation text is ever seen in training
  (packing later concatenates documents, which would otherwise leak across the boundary).
- A seeded permutation of document indices (numpy PCG64) decides: the first `n_val` indices of the
  permutation are held out. Documents are read in a fixed order (sorted files, file order of records),
  so the same source, fraction and seed always give the same split on every machine.
- `n_val = round(n * val_fraction)`, clamped so each side keeps at least one document; a source with
  fewer than two documents cannot be split and is an error (a single large text file is cut into
  several documents by the reader, see documents.py).
- Returned indices are sorted, so packing keeps the source's own order within each side.
"""

from __future__ import annotations

import numpy as np

from wrinklefree_core.data.documents import DataSourceError


def split_indices(n_documents: int, val_fraction: float, seed: int, name: str = "source") -> tuple[np.ndarray, np.ndarray]:
    """Split document indices 0..n_documents-1 into sorted (train, val) int64 arrays.

    Raises DataSourceError when `n_documents < 2` (`name` goes into the message).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n_documents < 2:
        raise DataSourceError(
            f"{name} has {n_documents} document(s); a held-out split needs at least 2. "
            f"Add documents (one per file in a folder, one per jsonl/parquet record) or use a larger source."
        )
    n_val = min(max(round(n_documents * val_fraction), 1), n_documents - 1)
    order = np.random.default_rng(seed).permutation(n_documents)
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)
