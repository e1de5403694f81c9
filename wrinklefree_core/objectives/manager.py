"""ObjectiveManager: combine the enabled loss terms with their (curriculum) weights.

    loss = sum_{objective o enabled, w_o(step) > 0} w_o(step) * L_o

The training loop asks the manager what to compute (`needs_teacher`, `needs_hidden_states`,
`needs_qkv`, `needs_dlm_forward`, or `needs_at(step, max_steps)` for one step), runs those forwards,
puts the results in a `LossInputs`, and gets back the total and every part for logging.

Design choices:
- The manager owns no model and runs no forward: it stays a pure function of tensors, so each loss
  is testable on hand-made numbers and the LightningModule decides how forwards are batched,
  compiled or checkpointed.
- Each objective describes itself (objectives/base.py, one registration per loss file): what a
  step must run for it, which inputs its loss reads, the loss, its stage tag. Here: ce -> student
  logits on the clean ids; dlm -> one extra student forward on the masked ids (`dlm_inputs` builds
  them); logits_kd -> teacher logits; attention_kd -> teacher and student Q/K/V at
  `kd.attention_layer` (capture_qkv); lrc -> teacher and student hidden states.
- A term whose weight is 0 at this step is not computed at all (and `needs_at` says so), so the
  early CE-only phase of a curriculum does not pay for the DLM forward.
- Parts are reported unweighted and weighted, as detached tensors: logging them needs no host sync
  until the logger decides to read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from wrinklefree_core.config.training import DLMConfig, KDConfig, LRCConfig, ObjectivesConfig, TrainingConfig
from wrinklefree_core.objectives.base import LossInputs, Requirements, get, registry
from wrinklefree_core.objectives.curriculum import Curriculum
from wrinklefree_core.objectives.dlm import mask_tokens, maskable_positions

OBJECTIVES = tuple(registry())
__all__ = ["OBJECTIVES", "LossInputs", "LossOutput", "ObjectiveManager", "Requirements"]


@dataclass
class LossOutput:
    """The combined loss and its parts."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    weighted: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def log_dict(self, prefix: str = "train") -> dict[str, torch.Tensor | float]:
        """Flat metrics: `{prefix}/loss`, `{prefix}/<name>`, `{prefix}/<name>_weighted`, `weight/<name>`."""
        out: dict[str, torch.Tensor | float] = {f"{prefix}/loss": self.loss.detach()}
        for name, value in self.parts.items():
            out[f"{prefix}/{name}"] = value
            out[f"{prefix}/{name}_weighted"] = self.weighted[name]
        for name, w in self.weights.items():
            out[f"weight/{name}"] = w
        return out


class ObjectiveManager:
    """Computes the enabled objectives and their weighted sum (module docstring)."""

    def __init__(
        self,
        objectives: ObjectivesConfig,
        curriculum: Curriculum | None = None,
        *,
        dlm: DLMConfig | None = None,
        kd: KDConfig | None = None,
        lrc: LRCConfig | None = None,
        mask_token_id: int | None = None,
    ):
        names = [n for n in registry() if hasattr(objectives, n)]  # the registered objectives the config can switch on
        self.enabled: tuple[str, ...] = tuple(n for n in names if getattr(objectives, n).enabled)
        if not self.enabled:
            raise ValueError("no objective is enabled: set training.objectives.<name>.enabled=true for at least one")
        base = {n: getattr(objectives, n).weight for n in names}
        disabled = [n for n in names if n not in self.enabled]
        self.curriculum = curriculum or Curriculum([], "step", base, disabled)
        self.dlm = dlm or DLMConfig()
        self.kd = kd or KDConfig()
        self.lrc = lrc or LRCConfig()
        self.mask_token_id = self.dlm.mask_token_id if self.dlm.mask_token_id is not None else mask_token_id
        if "dlm" in self.enabled and self.mask_token_id is None:
            raise ValueError(
                "the DLM objective needs a mask token: the tokenizer has none, so set training.dlm.mask_token_id"
            )

    @classmethod
    def from_config(cls, training: TrainingConfig, mask_token_id: int | None = None) -> "ObjectiveManager":
        """Build from a TrainingConfig; `mask_token_id` is the tokenizer's (training.dlm.mask_token_id wins)."""
        return cls(
            training.objectives,
            Curriculum.from_config(training),
            dlm=training.dlm,
            kd=training.kd,
            lrc=training.lrc,
            mask_token_id=mask_token_id,
        )

    # ------------------------------------------------------------------------------------ requirements

    @property
    def requirements(self) -> Requirements:
        """What any step of the run may need (over all enabled objectives)."""
        return Requirements.of(self.enabled)

    @property
    def needs_teacher(self) -> bool:
        """Some enabled objective reads the teacher (logits KD, attention KD, LRC)."""
        return self.requirements.teacher

    @property
    def needs_hidden_states(self) -> bool:
        """Some enabled objective reads per-layer hidden states (LRC)."""
        return self.requirements.hidden_states

    @property
    def needs_qkv(self) -> bool:
        """Some enabled objective reads Q/K/V of one layer (attention KD)."""
        return self.requirements.qkv

    @property
    def needs_dlm_forward(self) -> bool:
        """The DLM objective is enabled: a second student forward on masked ids is needed."""
        return self.requirements.dlm_forward

    def weights_at(self, step: int, max_steps: int) -> dict[str, float]:
        """Weight of each enabled objective at `step`."""
        weights = self.curriculum.weights_at(step, max_steps)
        return {n: weights[n] for n in self.enabled}

    def needs_at(self, step: int, max_steps: int) -> Requirements:
        """What step `step` needs: only objectives with a non-zero weight then count."""
        return Requirements.of([n for n, w in self.weights_at(step, max_steps).items() if w > 0])

    # ------------------------------------------------------------------------------------------- inputs

    def dlm_inputs(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked ids for the DLM forward: (noisy_ids, mask, t, maskable), with this run's mask token and eps."""
        if self.mask_token_id is None:
            raise ValueError("no mask token id: set training.dlm.mask_token_id or pass the tokenizer's")
        maskable = maskable_positions(input_ids, labels, attention_mask, shift=self.dlm.shift_labels)
        noisy, mask, t = mask_tokens(input_ids, self.mask_token_id, generator, eps=self.dlm.eps, maskable=maskable)
        return noisy, mask, t, maskable

    # ------------------------------------------------------------------------------------------ compute

    def compute(self, inputs: LossInputs, step: int = 0, max_steps: int = 1) -> LossOutput:
        """Total loss and parts for one step; objectives with weight 0 at `step` are skipped.

        Raises ValueError naming the missing field when an active objective's input is absent.
        """
        weights = self.weights_at(step, max_steps)
        active = [n for n, w in weights.items() if w > 0]
        if not active:
            raise ValueError(f"every enabled objective has weight 0 at step {step}/{max_steps}: nothing to train")
        valid = inputs.attention_mask.bool() if inputs.attention_mask is not None else None
        parts: dict[str, torch.Tensor] = {}
        for name in active:
            parts[name] = get(name)(inputs, valid, self)
        weighted = {n: weights[n] * parts[n] for n in active}
        total = torch.stack(list(weighted.values())).sum()
        return LossOutput(
            loss=total,
            parts={n: v.detach() for n, v in parts.items()},
            weighted={n: v.detach() for n, v in weighted.items()},
            weights=weights,
        )
