"""The weighted mixture: frequencies follow weights, remixing, exact resume, per-source epochs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from wrinklefree_core.data.mixture import MixtureSampler

EOS = 0
SEQ_LEN = 8


def rows(source: int, n: int) -> np.ndarray:
    """n rows whose first token encodes (source, row); one EOS in the middle of each row."""
    out = np.full((n, SEQ_LEN), 7, dtype=np.uint16)
    out[:, 0] = 1000 * (source + 1) + np.arange(n)
    out[:, 3] = EOS
    return out


def make(weights=None, sizes=(50, 30, 20), seed=0) -> MixtureSampler:
    names = ["a", "b", "c"][: len(sizes)]
    weights = weights or {"a": 0.5, "b": 0.3, "c": 0.2}
    return MixtureSampler({n: rows(i, size) for i, (n, size) in enumerate(zip(names, sizes))}, weights, EOS, seed=seed)


def frequencies(mixture: MixtureSampler, draws: int, batch_size: int = 200) -> np.ndarray:
    counts = np.zeros(len(mixture.names))
    for _ in range(draws // batch_size):
        counts += np.bincount(mixture.sample(batch_size)["source"].numpy(), minlength=len(mixture.names))
    return counts / counts.sum()


def test_batches_have_the_expected_fields():
    batch = make().sample(4)
    assert batch["input_ids"].shape == (4, SEQ_LEN) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # each row comes from the source its `source` entry names
    assert ((batch["input_ids"][:, 0] // 1000 - 1) == batch["source"]).all()


def test_source_frequencies_follow_the_weights_and_set_weights_changes_them():
    mixture = make(weights={"a": 5, "b": 3, "c": 2})
    assert mixture.weights == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    assert frequencies(mixture, 20_000) == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    mixture.set_weights({"a": 0.0, "b": 1.0, "c": 3.0})
    assert mixture.weights == pytest.approx({"a": 0.0, "b": 0.25, "c": 0.75})
    assert frequencies(mixture, 20_000) == pytest.approx([0.0, 0.25, 0.75], abs=0.02)


def test_invalid_weights_are_refused():
    mixture = make()
    with pytest.raises(ValueError, match="exactly the sources"):
        mixture.set_weights({"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        mixture.set_weights({"a": -1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        mixture.set_weights({"a": 0.0, "b": 0.0, "c": 0.0})


def test_state_dict_round_trip_continues_with_the_same_batches():
    original = make()
    for _ in range(7):  # enough to wrap source c (20 rows) at least once
        original.sample(16)
    original.set_weights({"a": 1.0, "b": 1.0, "c": 2.0})
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)  # as a training checkpoint would store it
    expected = [original.sample(16) for _ in range(5)]

    resumed = make()
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert resumed.weights == pytest.approx(original.weights)
    for want in expected:
        got = resumed.sample(16)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_state_of_other_data_is_refused():
    state = make().state_dict()
    with pytest.raises(ValueError, match="mixture state is for"):
        make(sizes=(50, 30, 21)).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        make(seed=1).load_state_dict(state)


def test_each_epoch_visits_every_row_once_in_a_new_order():
    mixture = MixtureSampler({"only": rows(0, 10)}, {"only": 1.0}, EOS, seed=0)
    seen = [int(mixture.sample(1)["input_ids"][0, 0]) - 1000 for _ in range(30)]
    epochs = [seen[0:10], seen[10:20], seen[20:30]]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert mixture.epochs == {"only": pytest.approx(3.0)}


def test_small_source_wraps_while_large_one_is_still_in_its_first_epoch():
    mixture = make(weights={"a": 1.0, "b": 1.0, "c": 1.0}, sizes=(1000, 1000, 5))
    for _ in range(10):
        mixture.sample(10)
    assert mixture.epochs["c"] > 2 and mixture.epochs["a"] < 1


def test_empty_source_or_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="no packed sequences"):
        MixtureSampler({"a": np.zeros((0, SEQ_LEN), dtype=np.uint16)}, {"a": 1.0}, EOS)
    with pytest.raises(ValueError, match="one seq_len"):
        MixtureSampler({"a": rows(0, 3), "b": np.ones((3, 4), dtype=np.uint16)}, {"a": 1.0, "b": 1.0}, EOS)
