"""LRC calibration loss: mean squared error between student and teacher decoder-layer outputs.

    L_LRC = (1/|S|) * sum_{l in S} (1/(N D)) * sum_{valid positions} || h^S_l - h^T_l ||^2

where h_l is the output hidden state of decoder layer l, N the number of valid positions and D the
hidden width. It trains only the low-rank correction adapters (models/lrc.py) so that the ternary
model's activations track the full-precision teacher's, the end-to-end form of the per-layer
reconstruction that "Low-Rank Correction for Quantized LLMs" (Scetbon & Hensman, 2024) solves.

Design choices:
- Which hidden states: the outputs of the chosen decoder layers S (`training.lrc.layers`, default
  every layer), read from HF's `output_hidden_states` tuple, whose entry 0 is the embedding output
  (never compared: embeddings stay full precision, so it carries no error) and entry l+1 the output
  of layer l. HF replaces the last entry by the final-RMSNorm output, so the last layer is compared
  after the final norm, i.e. exactly what the lm_head reads.
- Plain (unnormalised) MSE averaged over layers: the residual stream grows with depth, so deeper
  layers weigh more, which matches where the quantization error accumulates and matters for the
  output. Layers are averaged, not summed, so the loss scale does not depend on the depth.
- fp32 arithmetic; the teacher side is detached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wrinklefree_core.objectives.base import LossInputs, Objective, register


def hidden_layer_indices(num_layers: int, layers: Sequence[int] | None = None) -> list[int]:
    """Positions in an output_hidden_states tuple for decoder layers `layers` (None = all; negative from the end)."""
    chosen = range(num_layers) if layers is None else layers
    bad = [i for i in chosen if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for {num_layers} decoder layers")
    if not chosen:
        raise ValueError("no layers chosen for the LRC loss")
    return [i % num_layers + 1 for i in chosen]


def hidden_state_mse(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layers: Sequence[int] | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the chosen decoder layers of the per-element MSE between student and teacher outputs.

    `student_hidden`/`teacher_hidden` are HF `output_hidden_states` tuples (num_layers + 1 tensors of
    (B, L, D)); `layers` are decoder layer indices (None = all); `valid` an optional bool (B, L).
    Returns a 0-dim fp32 tensor.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student has {len(student_hidden) - 1} layers, teacher {len(teacher_hidden) - 1}")
    losses = []
    for index in hidden_layer_indices(len(student_hidden) - 1, layers):
        diff2 = (student_hidden[index].float() - teacher_hidden[index].detach().float()).pow(2)
        if valid is None:
            losses.append(diff2.mean())
        else:
            v = valid.bool()
            losses.append((diff2 * v[..., None]).sum() / (v.sum() * diff2.shape[-1]).clamp(min=1))
    return torch.stack(losses).mean()

def _objective_loss(inputs: LossInputs, valid: torch.Tensor | None, settings) -> torch.Tensor:
    return hidden_state_mse(inputs.hidden_states, inputs.teacher_hidden_states, settings.lrc.layers, valid)


OBJECTIVE = register(
    Objective(
        name="lrc",
        summary="hidden-state MSE to the teacher, for low-rank correction calibration",
        loss=_objective_loss,
        reads=("hidden_states", "teacher_hidden_states"),
        needs=frozenset({"teacher", "hidden_states"}),
        stage="lrc",
    )
)
