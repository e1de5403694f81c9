"""Held-out perplexity of a model, per data source, and the `wrinklefree eval` command.

    loss_s = (1/N_s) * sum over held-out rows of source s, positions i < L-1 of -log p(x[i+1] | x[<=i])
    perplexity_s = exp(loss_s)

Design choices:
- The rows are the packed validation rows of `build_datasets` (documents held out by the split), and
  each row is scored the way training sees it: position ids restart after every EOS, so attention
  stays inside each document (transformers builds the block-diagonal mask from them). Every next
  token counts, the one after an EOS included, as in training's CE.
- Sums of token losses and counts, not a mean of batch means, so the result does not depend on the
  batch size; the loss is summed in fp32.
- `load_for_eval` reads a BitNet checkpoint or a plain HF folder (the teacher), so one command
  compares a student with its teacher on the same rows (`wrinklefree eval`, evaluation/perplexity.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wrinklefree_core.data.packing import position_ids_from_eos


def token_nll(model: nn.Module, input_ids: torch.Tensor, eos_token_id: int | None) -> tuple[torch.Tensor, int]:
    """(sum of next-token negative log-likelihoods in fp32, number of scored tokens) for rows (B, L)."""
    position_ids = position_ids_from_eos(input_ids, eos_token_id) if eos_token_id is not None else None
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return nll, targets.numel()


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    val_sets: Mapping[str, torch.Tensor],
    *,
    batch_size: int = 8,
    eos_token_id: int | None = None,
    max_sequences: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per source: {"loss": mean next-token NLL, "perplexity": exp(loss), "tokens": scored tokens}.

    `val_sets` maps a source name to int64 rows (n, seq_len); at most `max_sequences` rows of each are
    used (the first ones). `eos_token_id` defaults to the model config's; None restarts no positions.
    The model runs in eval mode on its own device and is put back in its previous mode.
    """
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "config", None), "eos_token_id", None)
        if isinstance(eos_token_id, (list, tuple)):
            eos_token_id = eos_token_id[0] if eos_token_id else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    try:
        for name, rows in val_sets.items():
            rows = rows[:max_sequences]
            total, count = 0.0, 0
            for start in range(0, len(rows), batch_size):
                nll, n = token_nll(model, rows[start : start + batch_size].to(device), eos_token_id)
                total += float(nll)
                count += n
            loss = total / max(count, 1)
            results[name] = {"loss": loss, "perplexity": _safe_exp(loss), "tokens": float(count)}
    finally:
        model.train(was_training)
    return results


def overall(sources: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """Token-weighted (loss, perplexity) over all sources of an evaluate_perplexity result."""
    tokens = sum(r["tokens"] for r in sources.values())
    loss = sum(r["loss"] * r["tokens"] for r in sources.values()) / max(tokens, 1.0)
    return loss, math.exp(min(loss, 700.0))  # finite: it is logged as a metric


def val_metrics(sources: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """`val/<source>/{loss,ppl}` and the token-weighted `val/loss`, `val/ppl` of an evaluate_perplexity result."""
    metrics: dict[str, float] = {}
    for name, r in sources.items():
        metrics[f"val/{name}/loss"] = r["loss"]
        metrics[f"val/{name}/ppl"] = r["perplexity"]
    metrics["val/loss"], metrics["val/ppl"] = overall(sources)
    return metrics


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def load_for_eval(path: str | Path, device: str = "cpu") -> tuple[nn.Module, Any, str]:
    """(model, tokenizer, kind) for a BitNet checkpoint ("bitnet") or a plain HF folder ("hf")."""
    from transformers import AutoTokenizer

    from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint, load_bitnet_checkpoint
    from wrinklefree_core.models.sources import load_hf_model

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: pass checkpoint=DIR, a BitNet checkpoint or an HF model folder")
    if is_bitnet_checkpoint(folder):
        model, _ = load_bitnet_checkpoint(folder, device=device)
        return model, AutoTokenizer.from_pretrained(folder), "bitnet"
    model, tokenizer = load_hf_model(folder)
    return model.to(device).eval(), tokenizer, "hf"
