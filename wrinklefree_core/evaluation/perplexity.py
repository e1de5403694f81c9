"""Held-out perplexity of any pipeline artifact: an HF teacher, a BitNet checkpoint, or an exported GGUF.

Every artifact is scored on the same rows: the packed held-out rows of `cfg.data` at
`training.seq_len` (`build_datasets`, the split the training stages validate on), the first
`max_sequences` of each source.

Design choices:
- PyTorch artifacts go through `wrinklefree_core.training.evaluate` (positions restart after each
  EOS, so attention stays inside a document), so these numbers equal `wrinklefree eval`'s on the
  same rows.
- A GGUF is scored in llama.cpp, the runtime it ships to. llama.cpp has no per-token position
  reset, so each row is cut after every EOS and each piece is evaluated from an empty context; the
  logits of the pieces, put back together, are what the PyTorch path computes with its
  block-diagonal mask. The LoRA adapter GGUF of an LRC export is applied when present.
- The rows are tokenized with the checkpoint the GGUF was exported from (its stage.json), because
  the rows must be identical token for token across the table.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, read_manifest


def scored_rows(cfg: RunConfig, tokenizer, max_sequences: int | None, whole: Collection[str] = ()) -> dict[str, Any]:
    """{source: int64 rows (n, seq_len)}: the first `max_sequences` held-out rows of each source, or of all
    its documents for the sources named in `whole` (scored_split.py)."""
    from wrinklefree_core.data.datamodule_core import scored_sets

    sets = scored_sets(cfg.data, tokenizer, cfg.training.seq_len, whole)
    return {name: rows[:max_sequences] for name, rows in sets.items()}


def describe_heldout(cfg: RunConfig, rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{source: its path, digest, rows and tokens}: which held-out data a score is on (MLflow dataset inputs)."""
    from wrinklefree_core.tracking.datasets import describe_rows

    specs = {src.name: src.path for src in cfg.data.sources}
    return {name: describe_rows(specs.get(name, name), r) for name, r in rows.items()}


def torch_perplexity(
    folder: Path, cfg: RunConfig, max_sequences: int | None, whole: Collection[str] = (), device: str = "cpu"
) -> dict[str, Any]:
    """Perplexity per source of a BitNet checkpoint or HF folder, in PyTorch on `device`."""
    from wrinklefree_core.training.evaluate import evaluate_perplexity, load_for_eval

    model, tokenizer, kind = load_for_eval(folder, device)
    rows = scored_rows(cfg, tokenizer, max_sequences, whole)
    sources = evaluate_perplexity(model, rows, batch_size=cfg.training.batch_size, eos_token_id=tokenizer.eos_token_id)
    return {"kind": kind, "sources": _with_split(sources, whole), "datasets": describe_heldout(cfg, rows)}


def gguf_source_checkpoint(gguf: Path) -> Path:
    """The checkpoint a GGUF was exported from, read from the stage.json beside it."""
    if not (gguf.parent / MANIFEST_NAME).is_file():
        raise FileNotFoundError(
            f"{gguf.parent / MANIFEST_NAME} not found: cannot tell which checkpoint (tokenizer, teacher) {gguf.name} was "
            "exported from; evaluate the GGUF in the folder `wrinklefree export` wrote it to, beside its stage.json"
        )
    source = read_manifest(gguf.parent).inputs.get("checkpoint")
    if not source or not Path(source).is_dir():
        raise FileNotFoundError(f"the checkpoint {gguf.name} was exported from ({source}) is not available here")
    return Path(source)


def _document_pieces(row: list[int], eos: int | None) -> list[list[int]]:
    """A row cut right after every EOS (the EOS stays with the document it ends)."""
    pieces, current = [], []
    for tok in row:
        current.append(tok)
        if eos is not None and tok == eos:
            pieces.append(current)
            current = []
    if current:
        pieces.append(current)
    return pieces


def gguf_perplexity(gguf: Path, cfg: RunConfig, max_sequences: int | None, whole: Collection[str] = ()) -> dict[str, Any]:
    """Perplexity per source of an exported GGUF (+ its LoRA adapter) run in llama.cpp."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from wrinklefree_core.export.gguf_lora import lora_path_for
    from wrinklefree_core.export.llamacpp_api import llamacpp_logits, load_llama

    tokenizer = AutoTokenizer.from_pretrained(gguf_source_checkpoint(gguf))
    rows = scored_rows(cfg, tokenizer, max_sequences, whole)
    lora = lora_path_for(gguf)
    llm = load_llama(gguf, n_ctx=max(256, cfg.training.seq_len), lora_path=lora if lora.is_file() else None)
    sources: dict[str, dict[str, float]] = {}
    try:
        for name, source_rows in rows.items():
            total, count = 0.0, 0
            for row in source_rows.tolist():
                logits = np.concatenate([llamacpp_logits(llm, p) for p in _document_pieces(row, tokenizer.eos_token_id)])
                targets = torch.tensor(row[1:])
                total += float(F.cross_entropy(torch.from_numpy(logits[:-1]).float(), targets, reduction="sum"))
                count += len(row) - 1
            loss = total / max(count, 1)
            sources[name] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(count)}
    finally:
        llm.close()
    return {"kind": "gguf", "sources": _with_split(sources, whole), "datasets": describe_heldout(cfg, rows)}


def _with_split(sources: dict[str, dict[str, Any]], whole: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each source's result says which rows it is over: "all" documents or the "heldout" split."""
    return {name: {**r, "split": "all" if name in whole else "heldout"} for name, r in sources.items()}


def evaluate_local(path: Path, cfg: RunConfig, max_sequences: int | None, whole: Collection[str] = ()) -> dict[str, Any]:
    """Score a local artifact (folder or .gguf file) on the held-out rows, or all rows of the sources in
    `whole`; adds token-weighted `loss` and `perplexity`."""
    if path.is_file() and path.suffix == ".gguf":
        result = gguf_perplexity(path, cfg, max_sequences, whole)
    elif path.is_dir():
        result = torch_perplexity(path, cfg, max_sequences, whole)
    else:
        raise FileNotFoundError(f"{path} is neither a checkpoint folder nor a .gguf file")
    from wrinklefree_core.training.evaluate import overall

    result["loss"], result["perplexity"] = overall(result["sources"])
    result["seq_len"] = cfg.training.seq_len
    return result


def run_eval(cfg: RunConfig) -> dict[str, Any]:
    """`wrinklefree eval` of a checkpoint folder: `cfg.checkpoint`, else the materialized `cfg.model`.

    Scores the rows `eval.split` chooses (scored_split.py), the first `eval.max_sequences` of each
    source (all when null), `training.batch_size` at a time, on CUDA when there is one (compute.device).
    Returns {"checkpoint", "kind": "bitnet" | "hf", "seq_len", "sources": {name: {loss, perplexity, tokens, split}}}.
    """
    import torch

    from wrinklefree_core.evaluation.scored_split import whole_sources
    from wrinklefree_core.models.sources import materialize

    path = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else materialize(cfg.model)
    device = "cuda" if cfg.compute.device == "cuda" or (cfg.compute.device == "auto" and torch.cuda.is_available()) else "cpu"
    result = torch_perplexity(path, cfg, cfg.eval.max_sequences, whole_sources(cfg, path), device)
    return {"checkpoint": str(path), "kind": result["kind"], "seq_len": cfg.training.seq_len, "sources": result["sources"]}
