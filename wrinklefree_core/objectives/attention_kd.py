"""Attention-relation distillation at one layer (BitDistill, after MiniLMv2's multi-head self-attention relations).

For A in {Q, K, V}, the (B, L, D) output of that projection at the chosen decoder layer, split into
R relation heads A_r of width d_r = D / R:

    Rel(A)_r = softmax(A_r A_r^T / sqrt(d_r))                      (L x L, one row per query position)
    L_AKD = (1/3) * sum_{A in Q,K,V} (1/(B R N)) * sum_{b, r, valid i} KL(Rel(A^T)_{b,r,i} || Rel(A^S)_{b,r,i})

with A^T from the full-precision teacher and A^S from the ternary student, N the valid query rows
per sequence. This is BitDistill's (Wu et al., 2025) attention distillation; MiniLMv2 (Wang et al.,
2021) introduced the relations.

Design choices:
- One layer, not all: BitDistill distills a single late layer, which leaves the ternary student
  free in the layers below instead of forcing each of them to mimic the teacher. The index is
  configurable (`training.kd.attention_layer`), negative counts from the end, default -1.
- Relations compare tokens with tokens, so teacher and student widths may differ; only the number
  of relation heads must agree. R must divide both the query width and the (GQA-narrower) key/value
  width.
- Q/K/V are the raw projection outputs (the forward outputs of q_proj/k_proj/v_proj, bias included),
  before Qwen3's QK-norm and before RoPE, as MiniLM takes them; for a BitLinearLRC that output
  includes the low-rank correction.
- Relations span the whole sequence (MiniLM's full Q Q^T), not only the causal past: they describe
  how the representations relate, not what attention may read. Padded keys are masked out and
  padded query rows are excluded.
- Memory: a relation is (B, R, L, L) in fp32 per side and per projection (computed one at a time),
  which is why only one layer is distilled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from wrinklefree_core.objectives.base import LossInputs, Objective, register

QKV_NAMES = ("q", "k", "v")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of an HF causal LM (`model.model.layers`) or of its base model (`model.layers`)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no decoder layer list at .model.layers or .layers")
    return layers


@contextlib.contextmanager
def capture_qkv(model: nn.Module, layer_index: int = -1) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, record the q_proj/k_proj/v_proj outputs of decoder layer `layer_index`.

    Yields a dict that, after a forward, maps "q", "k", "v" to the (B, L, width) outputs (graph kept,
    so a student's capture carries gradients; run the teacher under no_grad). A later forward in the
    same block overwrites the entries. Works for HF Llama/Qwen2/Qwen3 and converted models (the
    projections may be nn.Linear, BitLinear or BitLinearLRC). Hooks are removed on exit.
    """
    layers = decoder_layers(model)
    if not -len(layers) <= layer_index < len(layers):
        raise ValueError(f"layer_index {layer_index} out of range for {len(layers)} decoder layers")
    attention = layers[layer_index].self_attn
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            captured[name] = output

        return hook

    try:
        for name in QKV_NAMES:
            handles.append(getattr(attention, f"{name}_proj").register_forward_hook(recorder(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _log_relations(states: torch.Tensor, heads: int, key_valid: torch.Tensor | None) -> torch.Tensor:
    """log softmax(A_r A_r^T / sqrt(d_r)) for states (B, L, D) split into `heads`: (B, R, L, L) fp32."""
    batch, length, width = states.shape
    if width % heads:
        raise ValueError(f"relation_heads={heads} does not divide the projection width {width}; choose a divisor of it")
    a = states.float().reshape(batch, length, heads, width // heads).transpose(1, 2)
    scores = a @ a.transpose(-1, -2) / math.sqrt(width // heads)
    if key_valid is not None:
        # The most negative finite value, not -inf: a row with no valid key stays finite (uniform)
        # instead of turning the backward pass into NaN.
        scores = scores.masked_fill(~key_valid[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl(
    student: torch.Tensor, teacher: torch.Tensor, heads: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over batch, relation heads and valid query rows of KL(Rel(teacher) || Rel(student)) for one of Q/K/V."""
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} disagree on (batch, seq)")
    key_valid = valid.bool() if valid is not None else None
    log_s = _log_relations(student, heads, key_valid)
    log_t = _log_relations(teacher.detach(), heads, key_valid)
    kl = torch.exp(log_t) * (log_t - log_s)
    if key_valid is not None:
        kl = kl.masked_fill(~key_valid[:, None, None, :], 0.0)
    per_row = kl.sum(-1)  # (B, R, L)
    if key_valid is None:
        return per_row.mean()
    rows = key_valid[:, None, :].expand_as(per_row)
    return (per_row * rows).sum() / rows.sum().clamp(min=1)


def attention_relation_loss(
    student_qkv: dict[str, torch.Tensor],
    teacher_qkv: dict[str, torch.Tensor],
    relation_heads: int = 8,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """BitDistill's attention-relation loss: the mean of relation_kl over Q, K and V.

    `student_qkv`/`teacher_qkv` are what capture_qkv recorded; `valid` is an optional bool (B, L)
    marking real (non-padding) tokens. Returns a 0-dim fp32 tensor.
    """
    missing = [n for n in QKV_NAMES if n not in student_qkv or n not in teacher_qkv]
    if missing:
        raise ValueError(f"Q/K/V states {missing} were not captured: run both forwards inside capture_qkv")
    parts = [relation_kl(student_qkv[n], teacher_qkv[n], relation_heads, valid) for n in QKV_NAMES]
    return torch.stack(parts).mean()

def _objective_loss(inputs: LossInputs, valid: torch.Tensor | None, settings) -> torch.Tensor:
    return attention_relation_loss(inputs.qkv, inputs.teacher_qkv, settings.kd.relation_heads, valid)


OBJECTIVE = register(
    Objective(
        name="attention_kd",
        summary="BitDistill attention-relation KD on one layer's Q/K/V",
        loss=_objective_loss,
        reads=("qkv", "teacher_qkv"),
        needs=frozenset({"teacher", "qkv"}),
        stage="distill",
    )
)
