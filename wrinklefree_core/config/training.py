"""The `training` config group: one option per training stage recipe.

Options: `unified` (CE + DLM with a curriculum, the recommended first stage), `lrc_calibration`,
`bitdistill_full`, `stage2_pretrain`. The fields here are shared by every recipe; a recipe's YAML
sets the values that make it what it is.

Objective weights: `objectives.<name>.weight` is the constant weight; a non-empty `curriculum` makes
the weights a function of training progress (see `wrinklefree_core/objectives/curriculum.py`).
`objectives.<name>.enabled: false` always wins: a curriculum never switches a disabled objective on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

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


OBJECTIVE_NAMES = tuple(ObjectivesConfig.model_fields)


class CurriculumPhase(Section):
    """One curriculum phase: the objective weights reached at the end of the phase."""

    until: float = Field(1.0, gt=0, le=1, description="End of this phase as a fraction of max_steps (phases in increasing order).")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Objective name -> weight; objectives left out keep objectives.NAME.weight."
    )

    @field_validator("weights")
    @classmethod
    def _known_nonnegative(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(OBJECTIVE_NAMES))
        if unknown:
            raise ValueError(f"unknown objective names {unknown}; choose from {list(OBJECTIVE_NAMES)}")
        negative = sorted(name for name, w in weights.items() if w < 0)
        if negative:
            raise ValueError(f"curriculum weights must be >= 0, got negative weights for {negative}")
        return weights


class CurriculumConfig(Section):
    """Objective weights that change with training progress; no phases = constant weights."""

    interpolation: Literal["step", "linear", "cosine"] = Field(
        "linear",
        description="step: each phase's weights hold for the whole phase; linear/cosine: ramp from the previous phase's "
        "weights to this phase's across the phase (the first phase is constant).",
    )
    phases: list[CurriculumPhase] = Field(
        default_factory=list,
        description="Phases as {until: fraction of max_steps, weights: {objective: weight}}, in increasing `until`; "
        "after the last phase its weights hold.",
    )

    @field_validator("phases")
    @classmethod
    def _increasing(cls, phases: list[CurriculumPhase]) -> list[CurriculumPhase]:
        untils = [p.until for p in phases]
        if any(b <= a for a, b in zip(untils, untils[1:])):
            raise ValueError(f"curriculum phases must have strictly increasing `until`, got {untils}")
        return phases


class DLMConfig(Section):
    """Masked-diffusion (DLM) objective options."""

    mask_token_id: int | None = Field(None, ge=0, description="Token id that replaces masked tokens; null = the tokenizer's mask token.")
    eps: float = Field(1e-3, gt=0, lt=1, description="Lower bound of the per-sequence mask rate t ~ U(eps, 1); also bounds the 1/t weight.")
    shift_labels: bool = Field(
        False, description="false: a masked token is predicted at its own position (LLaDA); true: from the previous position (Fast-dLLM v2)."
    )


class KDConfig(Section):
    """Knowledge-distillation options (logits KD and attention-relation KD)."""

    temperature: float = Field(1.0, gt=0, description="Softmax temperature for logits KD; the loss is scaled by T^2.")
    attention_layer: int = Field(-1, description="Decoder layer whose Q/K/V relations are distilled; negative counts from the end.")
    relation_heads: int = Field(8, gt=0, description="Relation heads Q/K/V are split into; must divide the q and k/v projection widths.")


class LRCConfig(Section):
    """Low-rank correction (LRC) adapters and their calibration loss."""

    rank_fraction: float = Field(0.1, gt=0, le=1, description="Adapter rank as a fraction of min(in, out) of each BitLinear (rounded up).")
    init: Literal["zeros", "svd"] = Field(
        "zeros", description="zeros: U = 0, V random (output unchanged at step 0); svd: top-r SVD of the residual W_teacher - s*W_q."
    )
    layers: list[int] | None = Field(
        None, description="Decoder layers whose output hidden states enter the MSE (negative from the end); null = every layer."
    )


class InfluenceConfig(Section):
    """Influence-based remixing: DataInf scores of each source on a probe set move the mixture weights (docs/influence.md)."""

    enabled: bool = Field(False, description="Re-weight the data sources every `every_n_steps` steps by their influence on the probe set.")
    every_n_steps: int = Field(50, gt=0, description="Optimizer steps between two weight updates.")
    probe: str = Field(
        "validation",
        description="Probe rows: validation = the held-out rows of every source (interleaved); a source name = only that source's held-out rows.",
    )
    probe_batches: int = Field(2, gt=0, description="Batches (training.batch_size rows each) of probe rows whose mean loss gradient is the target.")
    source_batches: int = Field(2, gt=0, description="Batches of training rows sampled per source at each update to score it.")
    params: list[Literal["embed", "lm_head"]] = Field(
        default_factory=lambda: ["embed", "lm_head"],
        description="Weights whose per-example gradients are scored; tied embeddings are one tensor (gradients summed).",
    )
    damping: float = Field(0.1, gt=0, description="DataInf damping: lambda_l = damping * mean squared gradient norm / weights in layer l.")
    step_size: float = Field(1.0, ge=0, description="eta of the update w := w * exp(eta * s / max|s|) (s = source scores).")
    min_weight: float = Field(0.05, ge=0, lt=1, description="Lower clamp of every source weight after the update.")
    max_weight: float = Field(0.9, gt=0, le=1, description="Upper clamp of every source weight after the update.")
    smoothing: float = Field(0.5, ge=0, lt=1, description="EMA factor beta: new = beta * previous + (1 - beta) * updated weights.")

    @field_validator("params")
    @classmethod
    def _some_params(cls, params: list[str]) -> list[str]:
        if not params or len(set(params)) != len(params):
            raise ValueError(f"influence.params must name embed and/or lm_head once each, got {params}")
        return params

    @model_validator(mode="after")
    def _bounds(self) -> "InfluenceConfig":
        if self.min_weight >= self.max_weight:
            raise ValueError(f"influence.min_weight ({self.min_weight}) must be below max_weight ({self.max_weight})")
        return self


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
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig, description="Objective weights over training progress.")
    dlm: DLMConfig = Field(default_factory=DLMConfig, description="Masked-diffusion objective options.")
    kd: KDConfig = Field(default_factory=KDConfig, description="Distillation options.")
    lrc: LRCConfig = Field(default_factory=LRCConfig, description="Low-rank correction adapters and loss.")
    frozen: list[str] = Field(
        default_factory=list,
        description="Parameter-name patterns (fnmatch, e.g. 'model.embed_tokens.*') kept frozen in this stage; each must match.",
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip (ZClip adapts below this ceiling).")
    checkpoint_every: int = Field(50, gt=0, description="Write a resumable checkpoint every N optimizer steps.")
    resume: Literal["auto", "never"] = Field("auto", description="auto = continue from the last checkpoint in `out`.")
    keep_state: bool = Field(
        True,
        description="Keep OUT.state/ (last resumable checkpoint with optimizer state, ~3x the model, and its bucket mirror) "
        "after the run finished; false deletes it once the output is written.",
    )
    val_every: int = Field(50, gt=0, description="Evaluate held-out perplexity every N steps.")
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig, description="Influence-based remixing of the data mixture.")
