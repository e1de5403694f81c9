"""The training stages (train / lrc / distill): BitNet checkpoint (+ teacher) -> BitNet checkpoint.

    start     out, the resumable state (OUT.state/), resume or start fresh        (training/resume.py)
    models    student <- BitNet checkpoint, or the source model converted in memory; trainable
              parameters per recipe; the teacher when an objective needs one     (training/inputs.py)
    fit       data, train module, MLflow logger, callbacks, Trainer; trainer.fit (training/fit.py)
    finish    held-out perplexity; OUT <- BitNet checkpoint + stage.json; MLflow final metrics

One entry point for every training recipe: `training=` picks it (unified, lrc_calibration,
bitdistill_full, stage2_pretrain) and the recipe's objectives decide the stage name recorded in
stage.json and MLflow (`stage_name`). lrc.py and distill.py register the pipeline stages that run
this function with their recipe.

Design choices:
- OUT is the final BitNet checkpoint folder, exactly like the convert stage's output, so the next
  stage takes it as `model=OUT` (or `checkpoint=OUT`) and the exporter reads it directly. It is
  written once, atomically, when training finishes; its stage.json carries `inputs.source_model`
  forward, so every later stage finds the chain's full-precision teacher.
- Resume (training/resume.py): `training.resume=auto` continues from `OUT.state/checkpoints/last`;
  Lightning restores the optimizer, scheduler, step, callback states and data position from
  trainer_state.pt, the train module its lambda warmup, ZClip, DLM generator and RNG. A run whose
  last checkpoint is already at max_steps only re-writes OUT.
- Devices, precision and strategy come from training/distributed.py: `compute.precision=auto` is
  bf16-mixed on CUDA and fp32 on CPU; more than one process uses `compute.strategy` (DDP on one
  node, FSDP2 across nodes). `training.batch_size` is per process. Under FSDP, checkpoints gather
  the full weights and rank 0 reloads the unsharded student for the final evaluation and OUT.
- Only global rank 0 touches the state folder, OUT and the tracking store.
- gs:// (artifacts/io.py): inputs are downloaded (the config keeps their URIs, so a resume on
  another machine compares equal); a gs:// OUT is trained in a kept local folder, its state
  mirrored to `OUT.state/checkpoints/step-N/` in the bucket, and OUT uploaded with its completion
  marker when training ends. Without the local state, `resume=auto` first pulls the newest complete
  checkpoint from the bucket, in the launching process before Lightning starts other ranks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from wrinklefree_core.artifacts.io import OutputTarget, plan_output
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, build_manifest, manifest_json
from wrinklefree_core.artifacts.result import StageResult
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages.base import Section, Stage, get, register
from wrinklefree_core.storage.locks import output_lock
from wrinklefree_core.tracking.params import RUN_FIELDS

COMPUTE = Section("compute", "Where the stage runs (backend, device, precision, SkyPilot resources).")


def _enabled(cfg: RunConfig) -> list[str]:
    from wrinklefree_core.objectives.base import registry

    objectives = cfg.training.objectives
    return [name for name in registry() if getattr(getattr(objectives, name, None), "enabled", False)]


def stage_name(cfg: RunConfig) -> str:
    """The stage a recipe is: the earliest pipeline stage its enabled objectives tag (lrc, distill), else train."""
    from wrinklefree_core.objectives.base import stages_of

    tagged = stages_of(_enabled(cfg))
    return min(tagged, key=lambda name: get(name).position) if tagged else "train"


def objective_check(stage: str, recipe: str):
    """The check of a training stage: some objective tagged with the stage (objectives/base.py) is enabled."""

    def check(cfg: RunConfig) -> str | None:
        from wrinklefree_core.objectives.base import registry

        tagged = [o.name for o in registry().values() if o.stage == stage]
        if not tagged or set(tagged) & set(_enabled(cfg)):
            return None
        return (
            f"stage '{stage}' needs a recipe with the {' or '.join(tagged)} objective (training={recipe}); "
            f"training={cfg.training.name} has none"
        )

    return check


def default_out(cfg: RunConfig) -> Path:
    """Output folder used when `out=` is not given."""
    return Path("outputs") / f"{cfg.model.name}-{cfg.training.name}"


def run_train(cfg: RunConfig) -> StageResult:
    """Train the student `cfg` describes with its recipe; write the BitNet checkpoint to `cfg.out`."""
    target = plan_output(cfg, default_out(cfg), keep=True)
    with output_lock(target.folder, stage_name(cfg), enabled=not target.mounted):
        return _train(cfg, target)


def _train(cfg: RunConfig, target: OutputTarget) -> StageResult:
    from wrinklefree_core.config.redact import redact
    from wrinklefree_core.training import fit as steps
    from wrinklefree_core.training.callbacks import Throughput
    from wrinklefree_core.training.inputs import build_models, trainable_count
    from wrinklefree_core.training.run_state import MODEL_DIR

    started = time.perf_counter()
    state, resume, settings = _start(cfg, target)
    student, objectives, teacher = build_models(cfg, state.last / MODEL_DIR, resume, settings)
    datamodule, module, batch_size = steps.build_data(cfg, student, objectives, teacher, settings, resume)
    stage = stage_name(cfg)
    trainable, total = trainable_count(student.model)
    logger = steps.build_logger(cfg, get(stage).tracked, target.uri, resume)
    fit = steps.Fit(
        datamodule, module, logger, None, Throughput(cfg.training.seq_len), batch_size, stage,
        redact(cfg.model_dump(mode="json")), trainable, total,
    )  # fmt: skip
    _log_start(cfg, fit, resume)
    steps.build_trainer(cfg, fit, state, student, settings, resume)
    steps.run_fit(cfg, fit, state, target.local, resume)
    if not fit.trainer.is_global_zero:
        return StageResult(out=target.local, metrics={})
    student = steps.final_student(student, state)
    return _finish(cfg, target, fit, student, state, resume, settings, time.perf_counter() - started)


def _start(cfg: RunConfig, target: OutputTarget):
    """(state, resume meta or None, trainer settings): the checks before anything loads."""
    from lightning.pytorch import seed_everything
    from lightning.pytorch.utilities import rank_zero_only

    from wrinklefree_core.artifacts.output_guard import check_output
    from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint
    from wrinklefree_core.training.distributed import trainer_settings
    from wrinklefree_core.training.fit import quiet
    from wrinklefree_core.training.resume import remote_state, resume_meta
    from wrinklefree_core.training.run_state import RunState

    out = target.local
    if out.exists() and not (is_bitnet_checkpoint(out) or (out.is_dir() and not any(out.iterdir()))):
        raise FileExistsError(f"out={out} exists and is not a WrinkleFree checkpoint; refusing to replace it. Choose another out=")
    is_zero = rank_zero_only.rank == 0
    quiet()
    settings = trainer_settings(cfg)
    state = RunState(out, remote_state(target, cfg))
    if target.remote is None or target.mounted:
        # With resumable state the resume check compares configs (and lets max_steps grow).
        inputs = {"input checkpoint": cfg.checkpoint, "source model": cfg.model.path, "teacher": cfg.teacher}
        check_output(stage_name(cfg), cfg, out, inputs, compare=not state.has_checkpoint())
    if is_zero and cfg.training.resume == "auto":
        pulled = state.pull()
        if pulled is not None:
            print(f"resuming from the bucket's checkpoint of step {pulled} ({state.remote.step_uri(pulled)})", flush=True)
    resume = resume_meta(cfg, state, is_zero)
    seed_everything(cfg.seed, workers=False, verbose=False)
    return state, resume, settings


def _log_start(cfg: RunConfig, fit, resume: dict[str, Any] | None) -> None:
    """A new MLflow run gets the stage's params and its dataset inputs (a continued one has them)."""
    from lightning.pytorch.utilities import rank_zero_only

    from wrinklefree_core.training.tracking import log_config, log_data

    if resume is not None and fit.logger.run_id == resume.get("mlflow_run_id"):
        return
    # `stage` is the design's name (lrc, distill), not the command (train) that RunConfig.stage holds.
    log_config(fit.logger, fit.config, get(fit.stage).tracked, {"resolved.batch_size": fit.batch_size, "resolved.trainable_params": fit.trainable})
    if rank_zero_only.rank == 0:
        dm = fit.datamodule
        log_data(fit.logger, cfg.data, {n: dm.mixture.rows(n) for n in dm.source_names}, dm.val_sets)


def _finish(cfg, target: OutputTarget, fit, student, state, resume, settings, seconds: float) -> StageResult:
    """Final held-out perplexity, OUT with its stage.json, MLflow's final metrics, the published URI."""
    import torch

    from wrinklefree_core.models.checkpoint import save_bitnet_checkpoint
    from wrinklefree_core.training.evaluate import evaluate_perplexity, val_metrics
    from wrinklefree_core.training.tracking import log_final

    out, module, trainer = target.local, fit.module, fit.trainer
    device = torch.device("cuda") if settings["accelerator"] == "gpu" else torch.device("cpu")
    student.model.to(device)
    val = evaluate_perplexity(student.model, fit.datamodule.val_sets, batch_size=fit.batch_size, eos_token_id=student.tokenizer.eos_token_id)
    metrics = module.last_step_metrics() or dict((resume or {}).get("last_metrics") or {})
    metrics.update(val_metrics(val))
    metrics.update(
        {
            "step": float(trainer.global_step),
            "tokens": float(fit.throughput.tokens),
            "seconds": seconds,
            "train_seconds": fit.seconds,
            "batch_size": float(fit.batch_size),
            "trainable_params": float(fit.trainable),
            "total_params": float(fit.total),
            "quant_lambda": float(module.warmup.value),
        }
    )
    # The mixture the run ended on (after influence remixing, its last update), to continue from.
    metrics.update({f"data/weight/{name}": w for name, w in fit.datamodule.mixture.latest_weights.items()})
    manifest = build_manifest(fit.stage, fit.config, student.inputs, metrics)
    student.model.cpu()
    save_bitnet_checkpoint(student.model, out, student.settings, tokenizer=student.tokenizer, extra_files={MANIFEST_NAME: manifest_json(manifest)})
    log_final(fit.logger, metrics, trainer.global_step, [out / MANIFEST_NAME])
    uri = target.publish(cfg.gcs)
    if not cfg.training.keep_state:
        state.clear()  # only after the output is written and published: a failure above keeps it
    return StageResult(out=out, metrics=metrics, uri=uri)


def report(result: StageResult) -> str:
    """The CLI's lines after a training stage: where it wrote, the last step's loss parts, held-out perplexity."""
    from wrinklefree_core.objectives.manager import OBJECTIVES

    m = result.metrics
    parts = ", ".join(f"{k}={m[k]:.4f}" for k in ("loss", *OBJECTIVES) if k in m)
    return (
        f"wrote BitNet checkpoint: {result.location}\n"
        f"  step {int(m['step'])}: {parts}; held-out perplexity {m['val/ppl']:.2f}; "
        f"{int(m['tokens']):,} tokens in {m['train_seconds']:.1f} s"
    )


def announce(cfg: RunConfig) -> str:
    """The CLI's line before a training stage."""
    t = cfg.training
    return f"training model={cfg.model.name} with training={t.name} for {t.max_steps} steps (resume={t.resume}) ..."


def training_stage(name: str, summary: str, position: int, recipe: str, sections: tuple[Section, ...], **kw) -> Stage:
    """A pipeline stage that runs `wrinklefree train` with `recipe` (train, lrc, distill), checked by objective_check."""
    return Stage(
        name=name, summary=summary, command="train", run=run_train, position=position, recipe=recipe,
        check=objective_check(name, recipe),
        sections=(*sections, COMPUTE), logs=("model", "training", "data", "compute", "gcs", "teacher", *RUN_FIELDS),
        announce=announce, report=report, **kw,
    )  # fmt: skip


STAGE = register(
    training_stage(
        "train",
        "BitNet checkpoint -> trained checkpoint (training=unified: CE + DLM with a curriculum)",
        position=20,
        recipe="unified",
        sections=(
            Section("training", "The unified recipe (configs/training/unified.yaml): CE + DLM with a curriculum."),
            Section("data", "The stage's training data."),
        ),
        usage="BitNet checkpoint or model (+ teacher) -> trained BitNet checkpoint (out=DIR; training=RECIPE)",
    )
)
