"""Fixtures of the evaluation tests: a private cache (the baselines are built there) and tiny teachers.

`eval_env` (session, autouse): a private WRINKLEFREE_CACHE, so the llama.cpp baselines made here
start from nothing and never reuse another session's files.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def eval_env(private_cache_env) -> Path:
    return private_cache_env("wrinklefree-eval-cache")


@pytest.fixture(scope="session")
def teacher_folder():
    """factory: the HF folder of a configs/model entry (tiny_llama, tiny_qwen2, ...), built in the private cache."""
    from wrinklefree_core.config import compose
    from wrinklefree_core.models.sources import materialize

    return lambda model: materialize(compose("convert", [f"model={model}"]).model)
