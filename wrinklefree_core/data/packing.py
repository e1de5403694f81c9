"""Tokenize documents once (cached on disk) and pack them into fixed-length training sequences.

Design choices:
- Every document is tokenized without special tokens and followed by one EOS; no BOS. Special-token
  text inside a document (a literal "<|endoftext|>") is tokenized as plain text
  (`split_special_tokens=True`), so an EOS id appears only at a real document end.
- Packing concatenates documents and cuts the stream into rows of exactly `seq_len` tokens; the last
  partial row is dropped (fewer than `seq_len` tokens per source and split). Documents cross row
  boundaries; nothing is padded.
- Labels are not masked at document boundaries: the model learns to predict the next document's first
  token after an EOS, as in GPT-2/BitNet-style packed pretraining. Boundaries stay recoverable from the
  tokens: `position_ids_from_eos` restarts positions at 0 at each row start and after each EOS. Given
  those position ids and no attention mask, transformers (5.x) builds a block-diagonal causal mask, i.e.
  attention stays inside each document; a training loop that omits them gets plain packed attention.
- The token cache holds, per source, one flat array of all documents (EOS included) and document
  offsets, so the split, `seq_len` and the seed can change without retokenizing. Its key digests the
  source fingerprint (file paths, sizes, mtimes), the tokenizer (its full serialized definition) and
  the settings above. Arrays are .npy (uint16 when the vocab fits, else uint32), written to a temp
  folder and renamed into place, so a crash never leaves a half-written entry; reads are memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wrinklefree_core.data.documents import Source, iter_documents, resolve_source
from wrinklefree_core.paths import cache_dir

# Part of every cache key: bump when the way token arrays are built changes.
CACHE_VERSION = "1"
TOKENIZE_BATCH = 64
_SETTINGS = {"add_special_tokens": False, "split_special_tokens": True, "eos_after_each_document": True}


@dataclass(frozen=True)
class TokenizedSource:
    """All documents of one source as one flat token array, each document ending with EOS."""

    tokens: np.ndarray  # 1-D uint16/uint32
    offsets: np.ndarray  # int64 [n_documents + 1]; document i is tokens[offsets[i]:offsets[i + 1]]
    eos_token_id: int
    from_cache: bool = False

    @property
    def n_documents(self) -> int:
        """Number of documents."""
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        """Token ids of document i, its trailing EOS included."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def eos_id(tokenizer) -> int:
    """The tokenizer's EOS id; packing cannot mark document ends without one."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token; packing needs one to separate documents")
    return int(tokenizer.eos_token_id)


def tokenizer_digest(tokenizer) -> str:
    """A digest of everything that decides how the tokenizer maps text to ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    payload = f"{type(tokenizer).__name__}:{eos_id(tokenizer)}:{definition}"
    return hashlib.sha256(payload.encode()).hexdigest()


def tokenize_documents(documents: Iterable[str], tokenizer, batch_size: int = TOKENIZE_BATCH) -> TokenizedSource:
    """Tokenize documents in batches and append EOS to each; returns the flat array and offsets."""
    eos = eos_id(tokenizer)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    pieces: list[np.ndarray] = []
    lengths: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        encoded = tokenizer(batch, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False)["input_ids"]
        for ids in encoded:
            arr = np.empty(len(ids) + 1, dtype=dtype)
            arr[:-1] = ids
            arr[-1] = eos
            pieces.append(arr)
            lengths.append(len(arr))
        batch.clear()

    for doc in documents:
        batch.append(doc)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedSource(tokens, offsets, eos)


def token_cache_key(source: Source, tokenizer) -> str:
    """The cache key of a source's token arrays under a tokenizer."""
    payload = json.dumps(
        {"v": CACHE_VERSION, "source": source.fingerprint(), "tokenizer": tokenizer_digest(tokenizer), "settings": _SETTINGS}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def load_tokens(spec: str | Source, tokenizer) -> TokenizedSource:
    """Token arrays of a source from the cache, tokenizing and caching them on a miss."""
    source = spec if isinstance(spec, Source) else resolve_source(spec)
    folder = cache_dir() / "tokens" / token_cache_key(source, tokenizer)
    if (folder / "meta.json").is_file():
        return TokenizedSource(
            np.load(folder / "tokens.npy", mmap_mode="r"),
            np.load(folder / "offsets.npy"),
            eos_id(tokenizer),
            from_cache=True,
        )
    tokenized = tokenize_documents(iter_documents(source), tokenizer)
    meta = {"spec": source.spec, "kind": source.kind, "n_documents": tokenized.n_documents, "n_tokens": len(tokenized.tokens)}
    _atomic_write(folder, tokenized, meta)
    return tokenized


def _atomic_write(folder: Path, tokenized: TokenizedSource, meta: dict) -> None:
    """Write the arrays into a temp sibling and rename it; a concurrent writer that won keeps its copy."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        np.save(tmp / "tokens.npy", tokenized.tokens)
        np.save(tmp / "offsets.npy", tokenized.offsets)
        # meta.json marks a complete entry, so it is written last.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pack_documents(tokenized: TokenizedSource, doc_indices: Sequence[int] | np.ndarray, seq_len: int) -> np.ndarray:
    """Concatenate the chosen documents (each ending with EOS) and cut them into [n, seq_len] rows.

    The final partial row is dropped, so n may be 0 when the documents hold fewer than seq_len tokens.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    pieces = [tokenized.document(int(i)) for i in doc_indices]
    flat = np.concatenate(pieces) if pieces else np.empty(0, dtype=tokenized.tokens.dtype)
    n = len(flat) // seq_len
    return np.ascontiguousarray(flat[: n * seq_len]).reshape(n, seq_len)


def position_ids_from_eos(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions that restart at 0 at the start of each row and right after each EOS.

    Works on [seq_len] or [batch, seq_len]; the EOS itself keeps the position of the document it ends.
    """
    length = input_ids.shape[-1]
    arange = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[..., 0] = True
    starts[..., 1:] = input_ids[..., :-1] == eos_token_id
    last_start = torch.where(starts, arange, torch.zeros_like(arange)).cummax(dim=-1).values
    return arange - last_start
