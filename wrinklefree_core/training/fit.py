"""The pieces of one training run between its models and its output: data, train module, tracking, Trainer, fit.

    data       mixture + held-out rows (the first rows of each source: as many as VAL_STEPS training
               steps consume, at most VAL_MAX_TOKENS tokens, so a validation costs a few steps)
    module     BitNetTrainModule (objectives, teacher), auto batch size on a fresh run
    tracking   the MLflow logger (a resumed run continues its own), params and dataset inputs
    trainer    throughput, NaN guard, influence remixing, resumable checkpoints, progress
    fit        trainer.fit from the last checkpoint on a resume, system metrics sampled meanwhile

Everything runs on every rank; only global rank 0 logs, writes checkpoints and reads them back.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.training.distributed import full_weights, is_sharded, world_size
from wrinklefree_core.training.run_state import MODEL_DIR, TRAINER_STATE, RunState

VAL_STEPS = 16
VAL_MAX_TOKENS = 1 << 17


@dataclass
class Fit:
    """What the stage keeps of a built training run."""

    datamodule: Any
    module: Any
    logger: Any
    trainer: Any
    throughput: Any
    batch_size: int
    stage: str
    config: dict[str, Any]  # the redacted resolved config (run.json, MLflow, stage.json)
    trainable: int
    total: int
    seconds: float = 0.0  # time inside trainer.fit


def quiet() -> None:
    """Silence Lightning's advice that does not apply to these runs."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_data(cfg: RunConfig, student, objectives, teacher, settings: dict[str, Any], resume: dict[str, Any] | None):
    """(datamodule, train module, micro-batch size): `resume` keeps the batch size its run chose."""
    from wrinklefree_core.training.batch_size import find_batch_size
    from wrinklefree_core.quant.int_matmul import int_matmul_faster
    from wrinklefree_core.training.compile import should_compile
    from wrinklefree_core.training.inputs import count_parameters
    from wrinklefree_core.training.datamodule import BitNetDataModule
    from wrinklefree_core.training.module import BitNetTrainModule

    seq_len, accumulation = cfg.training.seq_len, cfg.training.grad_accumulation
    device = "cuda" if settings["accelerator"] == "gpu" else "cpu"
    batch_size = int(resume["batch_size"]) if resume is not None else cfg.training.batch_size
    rows_per_step = batch_size * accumulation * world_size(settings)
    val_rows = max(1, min(VAL_STEPS * rows_per_step, VAL_MAX_TOKENS // seq_len))
    datamodule = BitNetDataModule(cfg.data, student.tokenizer, seq_len, batch_size, accumulation, val_max_sequences=val_rows)
    datamodule.setup("fit")
    module = BitNetTrainModule(
        student.model,
        cfg.training,
        objectives,
        teacher,
        seed=cfg.seed,
        val_names=datamodule.source_names,
        eos_token_id=student.tokenizer.eos_token_id,
        compile_blocks=should_compile(
            cfg.compute.compile, settings["accelerator"], cfg.training.max_steps, rows_per_step * seq_len, count_parameters(student.model)
        ),
        integer_matmul=int_matmul_faster(device) if cfg.compute.int_matmul == "auto" else cfg.compute.int_matmul,
    )
    if cfg.training.auto_batch_size and resume is None:
        batch_size = find_batch_size(module, seq_len, batch_size, bf16=settings["precision"] == "bf16-mixed")
        datamodule.batch_size = batch_size
        print(f"auto_batch_size: {batch_size} sequences per micro-batch", flush=True)
    return datamodule, module, batch_size


def build_logger(cfg: RunConfig, stage, out_uri: str, resume: dict[str, Any] | None):
    """The MLFlowLogger of `stage` (tracking.params.Tracked); a resumed run continues its MLflow run when this store has it."""
    from wrinklefree_core.artifacts.io import local_path
    from wrinklefree_core.artifacts.manifest import source_model_name
    from wrinklefree_core.tracking.stage_run import run_name
    from wrinklefree_core.training import tracking
    from wrinklefree_core.training.resume import known_run

    run_id = known_run(cfg, resume.get("mlflow_run_id")) if resume is not None else None
    # A checkpoint names the model it descends from; `model.name` is the config's default when only checkpoint= is given.
    model_name = source_model_name(local_path(cfg.checkpoint, cfg.gcs), cfg.model.name) if cfg.checkpoint else cfg.model.name
    tags = {"stage": stage.name, "recipe": cfg.training.name, "model": model_name, "out": out_uri}
    return tracking.build_logger(cfg, run_name=run_name(stage, model_name), tags=tags, run_id=run_id)


def build_trainer(cfg: RunConfig, fit: Fit, state: RunState, student, settings: dict[str, Any], resume: dict[str, Any] | None) -> None:
    """Callbacks and the Lightning Trainer, into `fit.trainer`."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities import rank_zero_only

    from wrinklefree_core.models.checkpoint import save_bitnet_checkpoint
    from wrinklefree_core.training.callbacks import InfluenceRemixing, NaNGuard, ResumableCheckpoint, progress_callbacks

    is_zero = rank_zero_only.rank == 0

    def write_model(folder: Path) -> None:
        with full_weights(student.model):  # every rank enters: FSDP gathers the shards here
            if is_zero:
                save_bitnet_checkpoint(student.model, folder, student.settings, tokenizer=student.tokenizer)

    def meta() -> dict[str, Any]:
        return {
            "stage": fit.stage,
            "config": fit.config,
            "inputs": student.inputs,
            "mlflow_run_id": fit.logger.run_id,
            "batch_size": fit.batch_size,
            "last_metrics": fit.module.last_step_metrics(),
        }

    checkpoint = ResumableCheckpoint(
        state, cfg.training.checkpoint_every, write_model, meta, last_step=resume["step"] if resume is not None else None
    )
    remix = [InfluenceRemixing(cfg.training.influence, fit.datamodule, seed=cfg.seed)] if cfg.training.influence.enabled else []
    progress, bar = progress_callbacks(fit.stage)
    fit.trainer = Trainer(
        **settings,
        enable_progress_bar=bar,
        max_steps=cfg.training.max_steps,
        max_epochs=-1,
        logger=fit.logger,
        callbacks=[fit.throughput, NaNGuard(checkpoint.last_good), *remix, checkpoint, *progress],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=cfg.training.val_every,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        default_root_dir=str(state.root),
    )


def run_fit(cfg: RunConfig, fit: Fit, state: RunState, out: Path, resume: dict[str, Any] | None) -> None:
    """trainer.fit to max_steps (from the last checkpoint on a resume), with system metrics sampled; `out` is named if it stops early."""
    from lightning.pytorch.utilities import rank_zero_only

    from wrinklefree_core.paths import mlflow_store_uri
    from wrinklefree_core.tracking.system_metrics import system_metrics

    trainer = fit.trainer
    ckpt_path = str(state.last / TRAINER_STATE) if resume is not None else None
    started = time.perf_counter()
    sampled = system_metrics(
        fit.logger.run_id if rank_zero_only.rank == 0 else None,
        mlflow_store_uri(cfg.tracking.mlflow_uri),
        cfg.tracking.system_metrics_interval_s,
        cfg.tracking.system_metrics,
    )
    try:
        with sampled:
            trainer.fit(fit.module, datamodule=fit.datamodule, ckpt_path=ckpt_path, weights_only=True)  # run_state.py: no code from state files
    finally:
        qk_clip = getattr(trainer.optimizers[0], "qk_clip", None) if trainer.optimizers else None
        if qk_clip is not None:
            qk_clip.remove()
    fit.seconds = time.perf_counter() - started
    if trainer.global_step < cfg.training.max_steps:
        # Only a stop request can end fit early (errors propagate); a partial model is not this stage's output.
        raise RuntimeError(
            f"training stopped at step {trainer.global_step} of {cfg.training.max_steps}; {out} was not written. "
            f"Re-run the same command to continue from {state.last}."
        )


def final_student(student, state: RunState):
    """The student to evaluate and write: a sharded run's final weights are the last checkpoint, gathered."""
    if is_sharded(student.model):
        from wrinklefree_core.training.inputs import load_checkpoint_student

        student.model = load_checkpoint_student(state.last / MODEL_DIR).model
    return student
