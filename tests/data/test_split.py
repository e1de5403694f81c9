"""Held-out split by document: deterministic, disjoint, close to the fraction, seed-dependent."""

from __future__ import annotations

import numpy as np
import pytest

from wrinklefree_core.data.documents import DataSourceError
from wrinklefree_core.data.split import split_indices


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_indices(200, 0.1, seed=3)
    again_train, again_val = split_indices(200, 0.1, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(200))
    assert len(val) == 20
    assert list(val) == sorted(val) and train.dtype == np.int64


@pytest.mark.parametrize("n,fraction", [(38, 0.05), (1000, 0.03), (7, 0.5)])
def test_fraction_is_approximately_right(n, fraction):
    _, val = split_indices(n, fraction, seed=0)
    assert abs(len(val) - n * fraction) <= 1


def test_different_seeds_hold_out_different_documents():
    assert not np.array_equal(split_indices(100, 0.2, seed=0)[1], split_indices(100, 0.2, seed=1)[1])


def test_each_side_keeps_at_least_one_document():
    train, val = split_indices(2, 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = split_indices(3, 0.99, seed=0)
    assert len(train) == 1 and len(val) == 2


def test_too_few_documents_is_an_error():
    with pytest.raises(DataSourceError, match="source 'tiny' has 1 document"):
        split_indices(1, 0.1, seed=0, name="source 'tiny'")
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.0, seed=0)
