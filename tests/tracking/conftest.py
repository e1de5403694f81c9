"""A fresh MLflow sqlite store (and artifact folder) per test: `store` is its URI, `mlflow_client` a client on it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_client(store):
    from wrinklefree_core.tracking.store import client

    return client(store)


@pytest.fixture
def run_id(mlflow_client, store, tmp_path) -> str:
    from wrinklefree_core.tracking.store import experiment_id

    exp = experiment_id(mlflow_client, "tests")
    return mlflow_client.create_run(exp).info.run_id
