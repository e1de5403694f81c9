"""Shared fixtures for the data tests: the tiny_llama tokenizer and an isolated token cache.

The tokenizer is the 512-token byte-level BPE of the `tiny_llama` model config (built once into the
cache in seconds). Every test gets its own WRINKLEFREE_CACHE, so token-cache hits and misses are
decided by the test alone and nothing is written into the user's cache.
"""

from __future__ import annotations

import pytest

from wrinklefree_core.config import compose
from wrinklefree_core.models.sources import materialize


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny_llama tokenizer (eos `<|endoftext|>`, id 0)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(materialize(compose("convert", ["model=tiny_llama"]).model))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """A fresh cache root per test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("WRINKLEFREE_CACHE", str(root))
    return root


def make_documents(n: int, sentences: int = 6) -> list[str]:
    """n distinct small documents, each naming its own index so it can be recognised after packing."""
    return [
        f"Document {i}.\n"
        + " ".join(f"Line {j} of document {i}: the quick brown fox, {i * j} times." for j in range(sentences))
        + "\n"
        for i in range(n)
    ]
