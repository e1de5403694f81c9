"""Training objectives: one file per loss term, plus the manager that weights and combines them.

Each loss file registers an `Objective` (base.py: name, what a step runs for it, the inputs its
loss reads, the loss, its stage tag); the manager, the stage naming and the recipe checks read it.

- ce.py: next-token cross entropy.
- dlm.py: masked-diffusion denoising (LLaDA / MDLM) and its masking process.
- logits_kd.py: KL(teacher || student) on temperature-softened logits.
- attention_kd.py: BitDistill / MiniLMv2 attention-relation KD and the Q/K/V capture hooks.
- lrc_loss.py: hidden-state MSE against the teacher, for low-rank correction calibration.
- curriculum.py: objective weights over training progress.
- manager.py: ObjectiveManager, which knows what each objective needs and sums the weighted terms.
"""

from wrinklefree_core.objectives.attention_kd import attention_relation_loss, capture_qkv, relation_kl
from wrinklefree_core.objectives.ce import cross_entropy_loss
from wrinklefree_core.objectives.curriculum import Curriculum
from wrinklefree_core.objectives.dlm import dlm_loss, mask_tokens, maskable_positions
from wrinklefree_core.objectives.logits_kd import logits_kd_loss
from wrinklefree_core.objectives.lrc_loss import hidden_state_mse
from wrinklefree_core.objectives.manager import LossInputs, LossOutput, ObjectiveManager, Requirements

__all__ = [
    "Curriculum",
    "LossInputs",
    "LossOutput",
    "ObjectiveManager",
    "Requirements",
    "attention_relation_loss",
    "capture_qkv",
    "cross_entropy_loss",
    "dlm_loss",
    "hidden_state_mse",
    "logits_kd_loss",
    "mask_tokens",
    "maskable_positions",
    "relation_kl",
]
