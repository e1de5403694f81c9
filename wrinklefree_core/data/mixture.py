"""A weighted mixture of packed sources that yields training batches and resumes exactly.

Design choices:
- Each row of a batch picks its source independently: `torch.multinomial` over the current
  normalised weights with one seeded `torch.Generator`. Sources therefore appear in proportion to
  their weights, in expectation, whatever their sizes.
- Within a source, rows are read through a permutation that is redrawn every epoch. The permutation
  is a pure function of (seed, source name, epoch), so it is never stored: the position in a source is
  just (epoch, cursor). A source that runs out wraps around into its next epoch on its own, so a small
  source is repeated while a large one is still in its first pass.
- `set_weights` changes the proportions from the next draw on, without touching positions or the
  generator. It is the hook for influence-based remixing, which uses `schedule_weights` to make the
  change at a given draw count instead: a data loader prefetches, so "the next draw" of a resumed run
  is not the draw that followed the change in the original run, but draw number N is.
- `state_dict()` holds the weights, the generator state, every (epoch, cursor), the draw count and
  any scheduled weights: loading it into a
  sampler built over the same sequences continues with exactly the batches the original would have
  produced. A sampler over different data refuses the state rather than silently diverging.
- Batches carry `position_ids` that restart after each EOS (see packing.py), `labels` equal to the
  inputs (the model shifts them), and `source`, the index of each row's source in `names`, so losses
  can be attributed per source.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from wrinklefree_core.data.packing import position_ids_from_eos


class MixtureSampler:
    """Draws batches of packed sequences from several sources with adjustable weights."""

    def __init__(
        self,
        sequences: Mapping[str, np.ndarray | torch.Tensor],
        weights: Mapping[str, float],
        eos_token_id: int,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        """`sequences`: per source name, a [n, seq_len] array of token ids (n >= 1, same seq_len everywhere)."""
        if not sequences:
            raise ValueError("a mixture needs at least one source")
        self.names: tuple[str, ...] = tuple(sequences)
        self._data: list[torch.Tensor] = []
        for name in self.names:
            rows = _as_rows(sequences[name])
            if rows.ndim != 2 or rows.shape[0] == 0:
                raise ValueError(f"source '{name}' has no packed sequences (shape {tuple(rows.shape)}); it cannot be sampled")
            self._data.append(rows)
        lengths = {rows.shape[1] for rows in self._data}
        if len(lengths) != 1:
            raise ValueError(f"all sources must share one seq_len, got {sorted(lengths)}")
        self.seq_len: int = lengths.pop()
        self.eos_token_id = eos_token_id
        self.seed = seed
        self.shuffle = shuffle
        self._weights = torch.zeros(len(self.names), dtype=torch.float64)
        self.set_weights(weights)
        self._generator = torch.Generator().manual_seed(seed)
        self._epochs = [0] * len(self.names)
        self._cursors = [0] * len(self.names)
        self._orders = [self._order(i, 0) for i in range(len(self.names))]
        self.draws = 0  # batches sampled so far
        self._scheduled: tuple[int, dict[str, float]] | None = None

    @property
    def weights(self) -> dict[str, float]:
        """Current sampling probabilities per source (they sum to 1)."""
        return {name: float(w) for name, w in zip(self.names, self._weights)}

    @property
    def latest_weights(self) -> dict[str, float]:
        """The weights scheduled last (normalised), else the current ones: what the mixture moves to next."""
        if self._scheduled is None:
            return self.weights
        total = sum(float(w) for w in self._scheduled[1].values())
        return {name: float(self._scheduled[1][name]) / total for name in self.names}

    @property
    def num_sequences(self) -> dict[str, int]:
        """Packed sequences per source."""
        return {name: rows.shape[0] for name, rows in zip(self.names, self._data)}

    @property
    def epochs(self) -> dict[str, float]:
        """Passes made over each source so far (fractional)."""
        return {n: e + c / rows.shape[0] for n, e, c, rows in zip(self.names, self._epochs, self._cursors, self._data)}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the weights (any non-negative scale, normalised here); every source must be named."""
        if set(weights) != set(self.names):
            raise ValueError(f"weights must name exactly the sources {list(self.names)}, got {sorted(weights)}")
        values = [float(weights[n]) for n in self.names]
        if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {dict(weights)}")
        total = sum(values)
        self._weights = torch.tensor([v / total for v in values], dtype=torch.float64)

    def schedule_weights(self, weights: Mapping[str, float], at_draw: int) -> None:
        """`set_weights(weights)` right before draw number `at_draw` (0-based); now if that draw is past."""
        self._scheduled = (int(at_draw), dict(weights))
        self._apply_scheduled()

    def rows(self, name: str) -> torch.Tensor:
        """The packed sequences of source `name` ([n, seq_len], read-only by convention)."""
        return self._data[self.names.index(name)]

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The next batch: input_ids, labels, position_ids [batch, seq_len] and source [batch] (int64)."""
        self._apply_scheduled()
        self.draws += 1
        choice = torch.multinomial(self._weights, batch_size, replacement=True, generator=self._generator)
        rows = [self._data[i][self._next_row(i)] for i in choice.tolist()]
        input_ids = torch.stack(rows).long()
        return {
            "input_ids": input_ids,
            "labels": input_ids.clone(),
            "position_ids": position_ids_from_eos(input_ids, self.eos_token_id),
            "source": choice,
        }

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """An endless stream of `sample(batch_size)`."""
        while True:
            yield self.sample(batch_size)

    def state_dict(self) -> dict:
        """Everything needed to continue with the same batches: weights, generator state, positions."""
        return {
            "names": list(self.names),
            "num_sequences": [rows.shape[0] for rows in self._data],
            "seed": self.seed,
            "shuffle": self.shuffle,
            "weights": self._weights.tolist(),
            "generator": self._generator.get_state().clone(),
            "epochs": list(self._epochs),
            "cursors": list(self._cursors),
            "draws": self.draws,
            "scheduled": None if self._scheduled is None else {"at_draw": self._scheduled[0], "weights": dict(self._scheduled[1])},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a `state_dict()` taken from a sampler over the same sources and sequences."""
        if list(state["names"]) != list(self.names) or list(state["num_sequences"]) != [r.shape[0] for r in self._data]:
            raise ValueError(
                f"mixture state is for sources {state['names']} with {state['num_sequences']} sequences; "
                f"this mixture has {list(self.names)} with {[r.shape[0] for r in self._data]}"
            )
        if state["seed"] != self.seed or state["shuffle"] != self.shuffle:
            raise ValueError(
                f"mixture state has seed={state['seed']} shuffle={state['shuffle']}; "
                f"this mixture has seed={self.seed} shuffle={self.shuffle}"
            )
        self.set_weights(dict(zip(self.names, state["weights"])))
        self._generator.set_state(state["generator"].clone())
        self._epochs = [int(e) for e in state["epochs"]]
        self._cursors = [int(c) for c in state["cursors"]]
        self._orders = [self._order(i, e) for i, e in enumerate(self._epochs)]
        # States written before draws were counted have no schedule to restore.
        self.draws = int(state.get("draws", 0))
        scheduled = state.get("scheduled")
        self._scheduled = None if scheduled is None else (int(scheduled["at_draw"]), dict(scheduled["weights"]))

    def _apply_scheduled(self) -> None:
        if self._scheduled is not None and self._scheduled[0] <= self.draws:
            self.set_weights(self._scheduled[1])
            self._scheduled = None

    def _next_row(self, i: int) -> int:
        if self._cursors[i] == len(self._orders[i]):
            self._epochs[i] += 1
            self._cursors[i] = 0
            self._orders[i] = self._order(i, self._epochs[i])
        row = int(self._orders[i][self._cursors[i]])
        self._cursors[i] += 1
        return row

    def _order(self, i: int, epoch: int) -> torch.Tensor:
        """Row order of source i in one epoch; keyed by name so adding a source leaves the others' orders alone."""
        n = self._data[i].shape[0]
        if not self.shuffle:
            return torch.arange(n)
        digest = hashlib.sha256(f"{self.seed}/{self.names[i]}/{epoch}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return torch.randperm(n, generator=gen)


def _as_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    # Token arrays arrive as uint16/uint32 numpy; int32 is the narrowest type torch indexes and stacks everywhere.
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.asarray(x, dtype=np.int32))
