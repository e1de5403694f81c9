"""`run_train(cfg)`: the train / lrc / distill stage, read top to bottom as the whole experiment.

    resolve out and the resumable state (OUT.state/, see run_state.py); resume or start fresh
    student  <- BitNet checkpoint, or the source model converted in memory     (inputs.py)
    trainable parameters per recipe; teacher if an objective needs one        (inputs.py)
    data (mixture + held-out rows), train module, callbacks, MLflow logger, Trainer
    trainer.fit(...)                                  (ckpt_path = last checkpoint on a resume)
    final held-out perplexity; OUT <- BitNet checkpoint + stage.json; MLflow final metrics + artifact

Design choices:
- OUT is the final BitNet checkpoint folder, exactly like the convert stage's output, so the next
  stage takes it as `model=OUT` (or `checkpoint=OUT`) and the exporter reads it directly. It is
  written once, atomically, when training finishes; its stage.json carries `inputs.source_model`
  forward, so every later stage finds the chain's full-precision teacher.
- `training.resume=auto` continues from `OUT.state/checkpoints/last` when it exists: the student is
  rebuilt from the checkpoint's model folder, and Lightning restores the rest from
  trainer_state.pt (optimizer, scheduler, global step, callback states, data position; the train
  module restores lambda warmup, ZClip, DLM generator and RNG). The config must match the one the
  checkpoint was written with, except run-length and bookkeeping keys (`_MAY_CHANGE`); the inputs
  (teacher, source model) and batch size recorded in run.json are reused. A run whose last
  checkpoint is already at max_steps only re-writes OUT. `training.resume=never` deletes the state
  and starts over.
- Devices, precision and strategy come from distributed.py: `compute.precision=auto` is bf16-mixed
  on CUDA and fp32 ("32-true") on CPU; more than one process uses `compute.strategy` (auto: DDP on
  one node, FSDP2 across nodes). `training.batch_size` is per process, so the global batch is
  world_size times larger. Under FSDP the gradient norm (ZClip, NaN guard) is all-reduced over the
  shards, checkpoints gather the full weights (same format as one process), and rank 0 reloads
  the unsharded student from the last checkpoint for the final evaluation and OUT.
- Validation during training and the final perplexity use the first held-out rows of each source:
  as many as VAL_STEPS training steps consume, at most VAL_MAX_TOKENS tokens. A validation then
  costs about as much as a few training steps (forward only), whatever the corpus or model size;
  `wrinklefree eval` scores every held-out row.
- Only global rank 0 touches the state folder, OUT and the tracking store.
- gs:// (artifacts/io.py): inputs are downloaded (the config keeps their URIs, so a resume on
  another machine compares equal); a gs:// OUT is trained in a kept local folder
  (cache_dir()/runs/...), its state mirrored to `OUT.state/checkpoints/step-N/` in the bucket
  (run_state.py), and OUT uploaded with its completion marker when training ends. On a machine
  without the local state, `resume=auto` first pulls the newest complete checkpoint from the bucket.
  The pull happens in the launching process before Lightning starts other ranks; processes
  started together by torchrun would each need the checkpoint first (not handled yet). A resumed run
  whose MLflow run is not in this machine's tracking store continues in a new MLflow run.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from wrinklefree_core.config.compose import ConfigError
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.config.flatten import flatten_values
from wrinklefree_core.config.redact import redact
from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint, save_bitnet_checkpoint
from wrinklefree_core.objectives import ObjectiveManager
from wrinklefree_core.artifacts.io import OutputTarget, as_uris, local_inputs, local_path, plan_output
from wrinklefree_core.artifacts.result import StageResult
from wrinklefree_core.uri import is_remote
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, build_manifest, manifest_json, source_model_name
from wrinklefree_core.artifacts.output_guard import check_output, differing_keys
from wrinklefree_core.storage.locks import output_lock
from wrinklefree_core.training.distributed import full_weights, is_sharded, trainer_settings, world_size
from wrinklefree_core.training.errors import ResumeError
from wrinklefree_core.training.evaluate import overall
from wrinklefree_core.training.inputs import (
    load_checkpoint_student,
    load_student,
    load_teacher,
    prepare_trainable,
    teacher_path,
    trainable_count,
)
from wrinklefree_core.training.run_state import MODEL_DIR, START_OVER, TRAINER_STATE, RunState, check_trainer_state

VAL_STEPS = 16
VAL_MAX_TOKENS = 1 << 17
# Config keys a resumed run may change: run length and bookkeeping, never what is being trained.
_MAY_CHANGE = (
    "stage",
    "out",
    "overwrite",
    "tracking",
    "compute",
    "export",
    "gcs",
    "training.max_steps",
    "training.resume",
    "training.checkpoint_every",
    "training.val_every",
    "training.auto_batch_size",
)


def stage_name(cfg: RunConfig) -> str:
    """The design's stage name for a recipe: lrc (LRC loss), distill (a KD loss), else train."""
    objectives = cfg.training.objectives
    if objectives.lrc.enabled:
        return "lrc"
    if objectives.logits_kd.enabled or objectives.attention_kd.enabled:
        return "distill"
    return "train"


def default_out(cfg: RunConfig) -> Path:
    """Output folder used when `out=` is not given."""
    return Path("outputs") / f"{cfg.model.name}-{cfg.training.name}"


# ------------------------------------------------------------------------------------------ resume


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring `_MAY_CHANGE`."""
    return differing_keys(saved, current, _MAY_CHANGE)


def _resume_meta(cfg: RunConfig, state: RunState, is_zero: bool) -> dict[str, Any] | None:
    """run.json of the checkpoint to resume from, or None to start fresh (module docstring)."""
    if cfg.training.resume == "never":
        if is_zero:
            state.clear()
        return None
    if is_zero:
        state.recover()
    if not state.has_checkpoint():
        return None
    meta = state.read_meta()
    check_trainer_state(state.last / TRAINER_STATE)
    if int(meta.get("step", 0)) > cfg.training.max_steps:
        # Lightning would stop at once and the output would claim max_steps it never ran.
        raise ResumeError(
            f"{state.last} is at step {meta['step']}, beyond training.max_steps={cfg.training.max_steps}. Pass "
            f"training.max_steps={meta['step']} or more to continue it, or {START_OVER}"
        )
    diff = config_differences(meta["config"], redact(cfg.model_dump(mode="json")))
    if diff:
        shown = ", ".join(f"{k} (checkpoint: {flatten_values(meta['config']).get(k)!r})" for k in diff[:8])
        raise ResumeError(
            f"{state.last} was written by a run with a different config: {shown}. Re-run with the same settings to "
            "continue it, pass training.resume=never to start over (deletes it), or choose another out="
        )
    return meta


# ------------------------------------------------------------------------------------------ trainer


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _use_sdpa(model: torch.nn.Module) -> None:
    # Eager attention (the loaders' default) keeps CPU numbers reproducible; on GPU, SDPA is much faster.
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter("sdpa")


def _teacher(cfg: RunConfig, inputs: dict[str, str], resume: dict[str, Any] | None) -> tuple[str, Path]:
    """(the teacher as stage.json names it, its local folder); a gs:// teacher is downloaded.

    The teacher is `teacher=`, else the chain's source model (inputs.py); a resumed run reuses the
    one its run.json records.
    """
    if resume is not None:
        named = inputs["teacher"]
    elif cfg.teacher:
        named = cfg.teacher
    else:
        named = inputs.get("source_model") or ""
    if not is_remote(named):
        path = Path(named) if resume is not None else teacher_path(cfg, inputs)
        return str(path), path
    return named, Path(local_path(named, cfg.gcs))


def _models(cfg: RunConfig, state: RunState, resume: dict[str, Any] | None, settings: dict[str, Any]):
    """(student with its trainable parameters set, ObjectiveManager, frozen teacher or None).

    `student.inputs` name gs:// inputs by their URIs, local ones by their paths.
    """
    local_cfg, origins = local_inputs(cfg)
    if resume is not None:
        student = load_checkpoint_student(state.last / MODEL_DIR)
        student.inputs = dict(resume["inputs"])
    else:
        student = load_student(local_cfg)
        student.inputs = as_uris(student.inputs, origins)
    try:
        objectives = ObjectiveManager.from_config(cfg.training, mask_token_id=student.tokenizer.mask_token_id)
    except ValueError as exc:  # e.g. DLM without a mask token: a config the user has to change
        raise ConfigError(f"training={cfg.training.name}: {exc}") from None
    teacher = None
    if objectives.needs_teacher:
        student.inputs["teacher"], path = _teacher(cfg, student.inputs, resume)
        teacher = load_teacher(path, torch.bfloat16 if settings["precision"] == "bf16-mixed" else torch.float32)
    student = prepare_trainable(student, cfg.training, cfg.seed, teacher)
    if settings["accelerator"] == "gpu":
        for model in (student.model, teacher):
            if model is not None:
                _use_sdpa(model)
    return student, objectives, teacher


# ------------------------------------------------------------------------------------------ the stage


def run_train(cfg: RunConfig) -> StageResult:
    """Train the student `cfg` describes with its recipe; write the BitNet checkpoint to `cfg.out`."""
    target = plan_output(cfg, default_out(cfg), keep=True)
    with output_lock(target.folder, stage_name(cfg), enabled=not target.mounted):
        return _train(cfg, target)


def _train(cfg: RunConfig, target: OutputTarget) -> StageResult:
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.utilities import rank_zero_only

    from wrinklefree_core.training.batch_size import find_batch_size
    from wrinklefree_core.training.callbacks import (
        InfluenceRemixing,
        NaNGuard,
        ResumableCheckpoint,
        Throughput,
        progress_callbacks,
    )
    from wrinklefree_core.training.datamodule import BitNetDataModule
    from wrinklefree_core.training.evaluate import evaluate_perplexity
    from wrinklefree_core.training.module import BitNetTrainModule
    from wrinklefree_core.tracking.stage_run import run_name
    from wrinklefree_core.tracking.system_metrics import system_metrics
    from wrinklefree_core.training.tracking import build_logger, log_config, log_data, log_final, tracking_uri

    started = time.perf_counter()
    out = target.local
    if out.exists() and not (is_bitnet_checkpoint(out) or (out.is_dir() and not any(out.iterdir()))):
        raise FileExistsError(f"out={out} exists and is not a WrinkleFree checkpoint; refusing to replace it. Choose another out=")
    is_zero = rank_zero_only.rank == 0
    _quiet()
    settings = trainer_settings(cfg)
    state = RunState(out, _remote_state(target, cfg))
    if target.remote is None or target.mounted:
        # With resumable state the resume check below compares configs (and lets max_steps grow).
        inputs = {"input checkpoint": cfg.checkpoint, "source model": cfg.model.path, "teacher": cfg.teacher}
        check_output(stage_name(cfg), cfg, out, inputs, compare=not state.has_checkpoint())
    if is_zero and cfg.training.resume == "auto":
        pulled = state.pull()
        if pulled is not None:
            print(f"resuming from the bucket's checkpoint of step {pulled} ({state.remote.step_uri(pulled)})", flush=True)
    resume = _resume_meta(cfg, state, is_zero)
    seed_everything(cfg.seed, workers=False, verbose=False)

    student, objectives, teacher = _models(cfg, state, resume, settings)
    tokenizer = student.tokenizer

    # Data and the train module.
    seq_len = cfg.training.seq_len
    batch_size = int(resume["batch_size"]) if resume is not None else cfg.training.batch_size
    rows_per_step = batch_size * cfg.training.grad_accumulation * world_size(settings)
    val_rows = max(1, min(VAL_STEPS * rows_per_step, VAL_MAX_TOKENS // seq_len))
    datamodule = BitNetDataModule(cfg.data, tokenizer, seq_len, batch_size, cfg.training.grad_accumulation, val_max_sequences=val_rows)
    datamodule.setup("fit")
    module = BitNetTrainModule(
        student.model,
        cfg.training,
        objectives,
        teacher,
        seed=cfg.seed,
        val_names=datamodule.source_names,
        eos_token_id=tokenizer.eos_token_id,
    )
    if cfg.training.auto_batch_size and resume is None:
        batch_size = find_batch_size(module, seq_len, batch_size, bf16=settings["precision"] == "bf16-mixed")
        datamodule.batch_size = batch_size
        print(f"auto_batch_size: {batch_size} sequences per micro-batch", flush=True)

    # Tracking and callbacks.
    stage = stage_name(cfg)
    config = redact(cfg.model_dump(mode="json"))  # run.json, MLflow params, stage.json: no URI secrets
    trainable, total = trainable_count(student.model)
    run_id = _known_run(cfg, resume.get("mlflow_run_id")) if resume is not None else None
    # A checkpoint names the model it descends from; `model.name` is the config's default when only checkpoint= is given.
    model_name = source_model_name(local_path(cfg.checkpoint, cfg.gcs), cfg.model.name) if cfg.checkpoint else cfg.model.name
    logger = build_logger(
        cfg,
        run_name=run_name(stage, model_name),
        tags={"stage": stage, "recipe": cfg.training.name, "model": model_name, "out": target.uri},
        run_id=run_id,
    )
    if run_id is None:
        # `stage` is the design's name (lrc, distill), not the command (train) that RunConfig.stage holds.
        log_config(logger, config, stage, {"resolved.batch_size": batch_size, "resolved.trainable_params": trainable})
        if is_zero:
            log_data(logger, cfg.data, {n: datamodule.mixture.rows(n) for n in datamodule.source_names}, datamodule.val_sets)
    throughput = Throughput(seq_len)

    def write_model(folder: Path) -> None:
        with full_weights(student.model):  # every rank enters: FSDP gathers the shards here
            if is_zero:
                save_bitnet_checkpoint(student.model, folder, student.settings, tokenizer=tokenizer)

    def meta() -> dict[str, Any]:
        return {
            "stage": stage,
            "config": config,
            "inputs": student.inputs,
            "mlflow_run_id": logger.run_id,
            "batch_size": batch_size,
            "last_metrics": _last_step_metrics(module),
        }

    checkpoint = ResumableCheckpoint(
        state, cfg.training.checkpoint_every, write_model, meta, last_step=resume["step"] if resume is not None else None
    )
    remix = [InfluenceRemixing(cfg.training.influence, datamodule, seed=cfg.seed)] if cfg.training.influence.enabled else []
    progress, bar = progress_callbacks(stage)
    trainer = Trainer(
        **settings,
        enable_progress_bar=bar,
        max_steps=cfg.training.max_steps,
        max_epochs=-1,
        logger=logger,
        callbacks=[throughput, NaNGuard(checkpoint.last_good), *remix, checkpoint, *progress],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=cfg.training.val_every,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        default_root_dir=str(state.root),
    )
    ckpt_path = str(state.last / TRAINER_STATE) if resume is not None else None
    fit_started = time.perf_counter()
    sampled = system_metrics(
        logger.run_id if is_zero else None,
        tracking_uri(cfg.tracking.mlflow_uri),
        cfg.tracking.system_metrics_interval_s,
        cfg.tracking.system_metrics,
    )
    try:
        with sampled:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # run_state.py: no code from state files
    finally:
        qk_clip = getattr(trainer.optimizers[0], "qk_clip", None) if trainer.optimizers else None
        if qk_clip is not None:
            qk_clip.remove()
    fit_seconds = time.perf_counter() - fit_started
    if trainer.global_step < cfg.training.max_steps:
        # Only a stop request can end fit early (errors propagate); a partial model is not this stage's output.
        raise RuntimeError(
            f"training stopped at step {trainer.global_step} of {cfg.training.max_steps}; {out} was not written. "
            f"Re-run the same command to continue from {state.last}."
        )
    if not trainer.is_global_zero:
        return StageResult(out=out, metrics={})
    if is_sharded(student.model):
        # The last checkpoint holds the final weights, gathered; evaluating the shards would need every rank.
        student.model = load_checkpoint_student(state.last / MODEL_DIR).model

    # Final numbers, the output checkpoint, tracking.
    device = torch.device("cuda") if settings["accelerator"] == "gpu" else torch.device("cpu")
    student.model.to(device)
    val = evaluate_perplexity(student.model, datamodule.val_sets, batch_size=batch_size, eos_token_id=tokenizer.eos_token_id)
    metrics = _last_step_metrics(module) or dict((resume or {}).get("last_metrics") or {})
    metrics.update(_val_metrics(val))
    metrics.update(
        {
            "step": float(trainer.global_step),
            "tokens": float(throughput.tokens),
            "seconds": time.perf_counter() - started,
            "train_seconds": fit_seconds,
            "batch_size": float(batch_size),
            "trainable_params": float(trainable),
            "total_params": float(total),
            "quant_lambda": float(module.warmup.value),
        }
    )
    # The mixture the run ended on (after influence remixing, its last update), to continue from.
    metrics.update({f"data/weight/{name}": w for name, w in datamodule.mixture.latest_weights.items()})
    manifest = build_manifest(stage, config, student.inputs, metrics)
    student.model.cpu()
    save_bitnet_checkpoint(
        student.model, out, student.settings, tokenizer=tokenizer, extra_files={MANIFEST_NAME: manifest_json(manifest)}
    )
    log_final(logger, metrics, trainer.global_step, [out / MANIFEST_NAME])
    uri = target.publish(cfg.gcs)
    if not cfg.training.keep_state:
        state.clear()  # only after the output is written and published: a failure above keeps it
    return StageResult(out=out, metrics=metrics, uri=uri)


def _remote_state(target: OutputTarget, cfg: RunConfig):
    """The bucket mirror of the resumable state of a gs:// OUT (None for local and mounted outputs)."""
    if target.remote is None or target.mounted:
        return None
    from wrinklefree_core.storage.checkpoints import RemoteCheckpoints
    from wrinklefree_core.uri import GCSURI

    uri = GCSURI(target.remote.bucket, f"{target.remote.prefix}.state/checkpoints")
    return RemoteCheckpoints(uri, cfg.gcs)


def _known_run(cfg: RunConfig, run_id: str | None) -> str | None:
    """`run_id` when this machine's tracking store has that MLflow run, else None (a new run is started)."""
    if not run_id:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from wrinklefree_core.training.tracking import tracking_uri

    try:
        MlflowClient(tracking_uri(cfg.tracking.mlflow_uri)).get_run(run_id)
    except MlflowException:
        print(f"MLflow run {run_id} of the checkpoint is not in this tracking store; continuing in a new run", flush=True)
        return None
    return run_id


def _last_step_metrics(module) -> dict[str, float]:
    """Loss and its parts at the last step this process ran (empty before the first step)."""
    if module.last_loss is None:
        return {}
    metrics = {"loss": float(module.last_loss)}
    metrics.update({name: float(v) for name, v in module.last_parts.items()})
    return metrics


def _val_metrics(val: dict[str, dict[str, float]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, r in val.items():
        metrics[f"val/{name}/loss"] = r["loss"]
        metrics[f"val/{name}/ppl"] = r["perplexity"]
    metrics["val/loss"], metrics["val/ppl"] = overall(val)
    return metrics

