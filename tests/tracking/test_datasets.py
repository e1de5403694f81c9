"""Datasets as run inputs: the digest follows the token rows, the context says what the rows were for."""

from __future__ import annotations

import json

import torch

from wrinklefree_core.tracking.datasets import CONTEXT_TAG, data_splits, log_datasets, rows_digest
from wrinklefree_core.config.data import DataConfig


def test_digest_follows_the_tokens():
    rows = torch.arange(64).reshape(4, 16)
    assert rows_digest(rows) == rows_digest(rows.clone())
    changed = rows.clone()
    changed[3, 15] += 1
    assert rows_digest(changed) != rows_digest(rows)
    assert rows_digest(rows.reshape(8, 8)) != rows_digest(rows)  # same tokens, other sequence length
    assert len(rows_digest(rows)) == 16


def test_logged_inputs_read_back(mlflow_client, run_id):
    data = DataConfig.model_validate({"config_name": "mix", "sources": [{"name": "docs", "path": "package:python_docs"}]})
    train, val = torch.ones(6, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64)
    assert log_datasets(mlflow_client, run_id, data_splits(data, {"docs": train}, {"docs": val})) == 2
    inputs = mlflow_client.get_run(run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == CONTEXT_TAG): i.dataset for i in inputs}
    assert set(by_context) == {"training", "validation"}
    assert by_context["training"].name == "docs" and by_context["training"].digest == rows_digest(train)
    assert json.loads(by_context["training"].source) == {"uri": "package:python_docs"}
    assert by_context["training"].source_type == "package"
    assert json.loads(by_context["validation"].profile) == {"num_rows": 2, "num_elements": 16}
