"""Masked-diffusion denoising (DLM), after LLaDA (Nie et al., 2025) and MDLM (Sahoo et al., 2024).

Forward process: for each sequence draw t ~ U(eps, 1) and replace every (maskable) token by the mask
token independently with probability t. The model sees the noisy sequence x_t and is trained to
recover the original tokens x_0 at the masked positions:

    L_DLM = (1/N) * sum_b (1/t_b) * sum_{i : m[b, i]} -log p_theta(x_0[b, i] | x_t[b])

with N the number of maskable tokens in the batch (B * L without padding). This is LLaDA's
pre-training estimator (their Eq. 3 and reference code): with the 1/t weight the loss is an upper
bound on the negative log-likelihood (the MDLM ELBO for the linear schedule). The normaliser is the
token count, not the number of masked tokens: about t*L tokens are masked, so a mean over masked
tokens would already divide by ~t and the 1/t weight would then count it twice, over-weighting
lightly masked sequences. eps > 0 keeps 1/t finite.

Design choices:
- `mask_tokens` builds the noisy input on its own, so the training loop runs one extra forward of
  the student on it next to the clean forward that CE (and KD) use; the two objectives share
  weights but not activations.
- The model is the same causal (left-to-right) network that CE trains, as in the "unified" AR +
  diffusion recipes (Fast-dLLM v2, Wu et al., 2025; Dream 7B): attention is not made bidirectional,
  so a masked token is predicted from the noisy left context only.
- Where the prediction is read, `shift`:
  - False (default): a masked token is predicted at its own position (LLaDA, MDLM). This is the
    objective exactly as the papers define it, independent of the attention pattern, so it stays
    correct if the attention is later made bidirectional; and because the input at a masked
    position is the mask token itself, the network can tell a "fill in this token" query from the
    next-token query CE trains at clean positions, which the shared head has to serve as well.
  - True: the hidden state at i-1 predicts a masked x_0[i] (Fast-dLLM v2's token shift, also Dream):
    the head keeps its next-token meaning, which preserves the pretrained AR model best. Position 0
    has no predecessor, so it is never masked in this mode.
- Targets are the clean input ids; positions excluded by `maskable` (padding, the first token of a
  packed document) are never masked and are not counted in N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrinklefree_core.objectives.base import LossInputs, Objective, register

DEFAULT_EPS = 1e-3
IGNORE_INDEX = -100


def maskable_positions(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    shift: bool = False,
) -> torch.Tensor:
    """Bool (B, L): tokens the forward process may mask.

    Excludes padding (attention_mask 0), positions whose label is IGNORE_INDEX, and with `shift`
    position 0, which has no predecessor to predict it from.
    """
    maskable = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        maskable &= attention_mask.bool()
    if labels is not None:
        maskable &= labels != IGNORE_INDEX
    if shift:
        maskable[:, 0] = False
    return maskable


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    *,
    eps: float = DEFAULT_EPS,
    maskable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample the masked-diffusion forward process for a batch of token ids (B, L).

    Draws t ~ U(eps, 1) per sequence and masks each token where `maskable` (bool (B, L), default all)
    with probability t. `generator` must live on input_ids' device (None = torch's global RNG).
    Returns (noisy_ids with masked tokens replaced by mask_token_id, mask (B, L) bool, t (B,) fp32).
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    batch, length = input_ids.shape
    device = input_ids.device
    t = eps + (1.0 - eps) * torch.rand(batch, generator=generator, device=device)
    mask = torch.rand(batch, length, generator=generator, device=device) < t[:, None]
    if maskable is not None:
        mask &= maskable.to(device=device, dtype=torch.bool)
    noisy = torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, mask, t


def dlm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    *,
    maskable: torch.Tensor | None = None,
    shift: bool = False,
) -> torch.Tensor:
    """LLaDA's 1/t-weighted masked-token cross entropy, normalised by the number of maskable tokens.

    `logits` (B, L, V) come from the forward on the noisy ids, `targets` (B, L) are the clean ids,
    `mask` and `t` are what mask_tokens returned, `maskable` what it was given (build it with
    maskable_positions, which also drops position 0 for `shift`; None = every token).
    `shift=True` scores masked token i with the logits at i-1 (see the module docstring).
    Returns a 0-dim fp32 tensor (0 when nothing is maskable).
    """
    if logits.shape[:-1] != targets.shape or mask.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask {tuple(mask.shape)} disagree on (batch, seq)"
        )
    count = maskable.sum() if maskable is not None else torch.tensor(targets.numel(), device=targets.device)
    if shift:
        logits, targets, mask = logits[:, :-1], targets[:, 1:], mask[:, 1:]
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    weight = mask.float() / t.float()[:, None]
    return (per_token * weight.reshape(-1)).sum() / count.clamp(min=1)

def _objective_loss(inputs: LossInputs, valid: torch.Tensor | None, settings) -> torch.Tensor:
    return dlm_loss(
        inputs.dlm_logits, inputs.input_ids, inputs.dlm_mask, inputs.dlm_t, maskable=inputs.dlm_maskable, shift=settings.dlm.shift_labels
    )


OBJECTIVE = register(
    Objective(
        name="dlm",
        summary="masked-diffusion denoising on a second, masked student forward",
        loss=_objective_loss,
        reads=("dlm_logits", "dlm_mask", "dlm_t"),
        needs=frozenset({"dlm_forward"}),
    )
)
