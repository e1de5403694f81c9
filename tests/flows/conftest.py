"""Fixtures for the flow tests: one private cache, one Prefect test harness, one smoke pipeline run.

- `flow_env` (session, autouse): a private WRINKLEFREE_CACHE (tiny model, tokenizer, token arrays,
  the MLflow sqlite store, persisted Prefect results), one torch/OpenMP thread (a shared 2-core
  machine slows multi-threaded tiny steps down badly), Prefect analytics off. It patches
  os.environ, so the real-server test's worker subprocesses share the same cache and store.
- `harness` (session): `prefect_test_harness` with a generous startup timeout (the ephemeral API
  needs ~13 s, more under load).
- `smoke_run` (session): the full pipeline on tiny_llama with the smoke budget, run once; the
  cache tests and the deployment test start from its outputs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def flow_env(private_cache_env) -> Path:
    return private_cache_env("wrinklefree-flow-cache", PREFECT_SERVER_ANALYTICS_ENABLED="false")


@pytest.fixture(scope="session")
def harness(flow_env):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def out_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def smoke_run(harness, out_root: Path) -> dict[str, Any]:
    """Summary of one full smoke pipeline run (plus its wall time under `seconds`)."""
    from flows.full_pipeline import full_pipeline
    from flows.params import smoke_params

    started = time.perf_counter()
    summary = full_pipeline(smoke_params(out_root=str(out_root)))
    summary["seconds"] = time.perf_counter() - started
    return summary
