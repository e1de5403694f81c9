"""Fixtures of the evaluation tests: a private cache (the baselines are built there) and tiny teachers.

`eval_env` (session, autouse): a private WRINKLEFREE_CACHE (and nothing else), so the llama.cpp
baselines made here start from nothing and never reuse another session's files.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def eval_env(tmp_path_factory):
    # Only the cache folder: the OpenMP and torch thread settings of private_cache_env would stay for
    # the rest of the session and change the kernel paths the export tests after this folder run on.
    patch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("wrinklefree-eval-cache")
    patch.setenv("WRINKLEFREE_CACHE", str(root))
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def teacher_folder():
    """factory: the HF folder of a configs/model entry (tiny_llama, tiny_qwen2, ...), built in the private cache."""
    from wrinklefree_core.config import compose
    from wrinklefree_core.models.sources import materialize

    return lambda model: materialize(compose("convert", [f"model={model}"]).model)
