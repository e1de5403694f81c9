"""The `training` config group: one option per training stage recipe.

Options: `unified` (CE + DLM with a curriculum, the recommended first stage), `lrc_calibration`,
`bitdistill_full`, `stage2_pretrain`. The fields here are shared by every recipe; a recipe's YAML
sets the values that make it what it is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wrinklefree_core.config.base import Section


class OptimizerConfig(Section):
    """Optimizer and its hyper-parameters."""

    type: Literal["adamw", "muon", "muonclip"] = Field(
        "adamw", description="adamw; muon (Muon on 2-D hidden weights, AdamW on the rest); muonclip (Muon + QK-clip)."
    )
    lr: float = Field(5e-4, gt=0, description="Peak learning rate for the AdamW parameter groups.")
    muon_lr: float = Field(0.02, gt=0, description="Peak learning rate for Muon parameter groups.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW beta1, beta2.")
    qk_clip_tau: float = Field(100.0, gt=0, description="MuonClip: rescale W_q/W_k of a head when its max logit exceeds this.")


class ScheduleConfig(Section):
    """Warmup-stable-decay learning-rate schedule, as fractions of max_steps."""

    warmup_fraction: float = Field(0.05, ge=0, le=1, description="Fraction of steps spent warming up linearly from 0.")
    decay_fraction: float = Field(0.2, ge=0, le=1, description="Final fraction of steps decaying to min_lr_ratio * lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="LR at the end of decay, relative to the peak.")


class LambdaWarmupConfig(Section):
    """Ramp of the quantization blend from full precision to ternary."""

    steps: int = Field(0, ge=0, description="Optimizer steps to ramp lambda from `start` to 1; 0 = quantized from step 0.")
    kind: Literal["linear", "cosine"] = Field("linear", description="Shape of the ramp.")
    start: float = Field(0.0, ge=0, le=1, description="Lambda at step 0.")


class ObjectiveConfig(Section):
    """One loss term."""

    enabled: bool = Field(False, description="Whether this objective contributes to the loss.")
    weight: float = Field(1.0, ge=0, description="Weight of this objective in the combined loss.")


class ObjectivesConfig(Section):
    """Every loss term a stage can combine."""

    ce: ObjectiveConfig = Field(default_factory=lambda: ObjectiveConfig(enabled=True), description="Next-token cross entropy.")
    dlm: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="Masked-diffusion denoising loss.")
    logits_kd: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="KL to the teacher's logits.")
    attention_kd: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="BitDistill attention-relation KD.")
    lrc: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="Hidden-state MSE to the teacher (LRC).")


class TrainingConfig(Section):
    """A training stage recipe."""

    name: str = Field("unified", description="Recipe name (the option chosen in the training group).")
    max_steps: int = Field(100, gt=0, description="Optimizer steps to run.")
    batch_size: int = Field(4, gt=0, description="Sequences per optimizer step per device (before accumulation).")
    grad_accumulation: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    auto_batch_size: bool = Field(False, description="Find the largest batch that fits in memory before training.")
    seq_len: int = Field(256, gt=0, description="Tokens per packed training sequence.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer settings.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Learning-rate schedule.")
    lambda_warmup: LambdaWarmupConfig = Field(default_factory=LambdaWarmupConfig, description="Quantization warmup.")
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig, description="Loss terms and their weights.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip (ZClip adapts below this ceiling).")
    checkpoint_every: int = Field(50, gt=0, description="Write a resumable checkpoint every N optimizer steps.")
    resume: Literal["auto", "never"] = Field("auto", description="auto = continue from the last checkpoint in `out`.")
    val_every: int = Field(50, gt=0, description="Evaluate held-out perplexity every N steps.")
