"""Logits distillation: KL(teacher || student) on temperature-softened next-token distributions.

    p_T = softmax(z_T / T),  p_S = softmax(z_S / T)
    L_KD = T^2 * (1/N) * sum_{valid positions} sum_v p_T[v] * (log p_T[v] - log p_S[v])

after Hinton et al. (2015), as BitDistill (Wu et al., 2025) uses it between the full-precision teacher
and the ternary student.

Design choices:
- Forward KL (teacher as the target distribution): the student is pulled to cover every token the
  teacher considers likely, which is what the distillation papers above use.
- The T^2 factor keeps the gradient magnitude independent of T (softening divides the logit
  gradients by T^2), so the weight of this term need not change when T does.
- Every position is a prediction, so no shift is needed; positions where `valid` is False (padding)
  are excluded from the mean. N is the number of valid positions.
- fp32 log-softmax for both sides; the teacher side is detached (it never trains).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrinklefree_core.objectives.base import LossInputs, Objective, register


def logits_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * mean over valid positions of KL(softmax(teacher/T) || softmax(student/T)).

    `student_logits` and `teacher_logits` are (B, L, V) with the same vocabulary; `valid` is an
    optional bool (B, L). Returns a 0-dim fp32 tensor (0 when nothing is valid).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "logits KD needs the same vocabulary and batch"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_position = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(-1)
    if valid is None:
        return per_position.mean() * temperature**2
    valid = valid.bool()
    return (per_position * valid).sum() / valid.sum().clamp(min=1) * temperature**2

def _objective_loss(inputs: LossInputs, valid: torch.Tensor | None, settings) -> torch.Tensor:
    return logits_kd_loss(inputs.logits, inputs.teacher_logits, settings.kd.temperature, valid)


OBJECTIVE = register(
    Objective(
        name="logits_kd",
        summary="KL to the teacher's temperature-softened logits",
        loss=_objective_loss,
        reads=("logits", "teacher_logits"),
        needs=frozenset({"teacher"}),
        stage="distill",
    )
)
