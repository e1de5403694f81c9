"""Next-token cross entropy: the causal-LM objective every recipe starts from.

    L_CE = -(1/N) * sum_{b, i : y[b, i+1] != ignore} log softmax(z[b, i])[y[b, i+1]]

where z are the logits at position i, y the labels aligned with the input ids (HF convention:
`labels == input_ids` except for ignored positions) and N the number of counted targets.

Design choices:
- The shift happens here, so callers pass labels aligned with the inputs, as HF models take them.
- Targets equal to `ignore_index` (-100: padding, and the first token of each packed document so
  that no token is predicted across a document boundary) are excluded from the sum and from N.
- Log-softmax runs in fp32 whatever the logits dtype: bf16 logits lose the small probabilities that
  dominate the loss of a confident model.
- A batch with no counted target gives 0 (not NaN), so a fully padded micro-batch cannot poison a
  gradient accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrinklefree_core.objectives.base import LossInputs, Objective, register

IGNORE_INDEX = -100


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross entropy of `logits` (B, L, V) against `labels` (B, L), shifted by one.

    Position i's logits are scored against labels[:, i + 1]; targets equal to `ignore_index` do not
    count. Returns a 0-dim fp32 tensor (0 when no target counts).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (batch, seq)")
    shift_logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    count = (targets != ignore_index).sum()
    return per_token.sum() / count.clamp(min=1)

def _objective_loss(inputs: LossInputs, valid: torch.Tensor | None, settings) -> torch.Tensor:
    labels = inputs.labels if inputs.labels is not None else inputs.input_ids
    if valid is not None:
        labels = labels.masked_fill(~valid, IGNORE_INDEX)
    return cross_entropy_loss(inputs.logits, labels)


OBJECTIVE = register(Objective(name="ce", summary="next-token cross entropy", loss=_objective_loss, reads=("logits",)))
