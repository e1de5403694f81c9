"""BitNetTrainModule: one optimizer step of a BitNet student, for every recipe (unified, LRC, distill).

The train module owns the step; the Trainer owns the loop (OLMo-core's split). A step is:

    zero grads
    for each micro-batch (grad_accumulation of them):
        [teacher forward under no_grad]  student forward  [student forward on DLM-masked ids]
        loss = ObjectiveManager.compute(...) / grad_accumulation;  backward
    optimizer.step()   -> callbacks' on_before_optimizer_step (NaN guard), then ZClip (this module's hook)
    LR scheduler step;  lambda warmup step, written into every BitLinear

Design choices:
- Manual optimization. One `training_step` is exactly one optimizer step, so the global step,
  the data position, the curriculum/lambda/LR schedules and the checkpoints all count the same
  thing, and the order above is visible in one function. (Lightning's automatic optimization
  would split it across accumulate_grad_batches, configure_gradient_clipping and optimizer_step
  hooks.) Under DDP, micro-batches other than the last run inside the strategy's
  `block_backward_sync()`, so gradients are all-reduced once per step.
- ZClip runs in `on_before_optimizer_step`, the point where gradients are final (after the
  accumulation and the DDP all-reduce) and before the update. Callbacks' hooks run first, so the NaN
  guard sees the raw gradients and can stop the run before anything changes.
- The teacher is frozen, kept in eval mode under no_grad, and is deliberately not a registered
  submodule: it is then not in the state dict, not in the optimizer, not wrapped by DDP, and never
  written into a checkpoint. It is moved to the training device in `on_fit_start`.
- A term whose curriculum weight is 0 at this step costs nothing (the DLM forward is skipped in the
  CE-only phase), and only the captures an objective needs are taken (hidden states, Q/K/V).
- DLM masks come from this module's own CPU generator (seeded from `seed`, checkpointed), so a
  resumed run masks exactly the tokens the uninterrupted one would, on any device. Data-parallel
  ranks draw the whole global micro-batch's masks and keep their rows' (distributed.py).
- Under FSDP, `configure_model` shards the student (distributed.py) once the device mesh exists.
- Checkpoint contents (Lightning's `trainer.save_checkpoint`, restored by `fit(ckpt_path=...)`):
  the weights are removed in `on_save_checkpoint` because the model folder beside the file holds
  them (the runner loads the student from it before fit); what this module adds is lambda warmup,
  ZClip, the DLM generator and the global RNG states (torch, CUDA, numpy, python). The RNG states
  are restored at the start of the first batch after a resume, after Lightning has finished its
  own setup, so the stream a step sees matches the uninterrupted run.
- Metrics go straight to the loggers at step = completed optimizer steps (1-based), the step count
  checkpoints and errors name, and before the step's checkpoint is written (Lightning's `self.log`
  would flush them only after `on_train_batch_end`, so a crash right after a checkpoint would lose
  that step's metrics). `self.log` only feeds the progress bar.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn

from wrinklefree_core.config.training import TrainingConfig
from wrinklefree_core.models.bitlinear import set_integer_matmul, set_quant_lambda
from wrinklefree_core.objectives import LossInputs, ObjectiveManager, Requirements, capture_qkv
from wrinklefree_core.quant.warmup import LambdaWarmup
from wrinklefree_core.training.compile import CompiledBlocks
from wrinklefree_core.training.distributed import dlm_inputs_for_rank, mean_over_ranks, shard_student
from wrinklefree_core.training.evaluate import token_nll
from wrinklefree_core.training.optimizers import build_optimizer
from wrinklefree_core.training.schedule import build_scheduler
from wrinklefree_core.training.zclip import ZClip

CHECKPOINT_KEY = "wrinklefree"


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states of torch (CPU and every CUDA device), numpy and python, as tensors and plain values.

    No numpy object goes into the trainer state: it is loaded with `weights_only=True`, which
    unpickles only tensors and Python literals (anything else could run code, see run_state.py).
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy_state["kind"], keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])


def log_to_loggers(trainer, metrics: dict[str, float]) -> None:
    """Send `metrics` to every logger now, at step = completed optimizer steps (see the module docstring)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def _split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Cut a step's batch into `parts` equal micro-batches along the batch dimension."""
    rows = batch["input_ids"].shape[0]
    if rows % parts:
        raise ValueError(f"a step's {rows} rows cannot be split into {parts} equal micro-batches")
    chunks = {k: v.split(rows // parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


class BitNetTrainModule(LightningModule):
    """Trains `student` with the objectives of a recipe (see the module docstring for one step)."""

    def __init__(
        self,
        student: nn.Module,
        training: TrainingConfig,
        objectives: ObjectiveManager,
        teacher: nn.Module | None = None,
        *,
        seed: int = 0,
        val_names: Sequence[str] = (),
        eos_token_id: int | None = None,
        compile_blocks: bool = False,
        integer_matmul: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        # Weights come from the model folder next to the trainer state, never from the .pt file.
        self.strict_loading = False
        self.student = student
        self.training_cfg = training
        self.objectives = objectives
        self.max_steps = training.max_steps
        self.val_names = list(val_names)
        self.eos_token_id = eos_token_id
        if objectives.needs_teacher and teacher is None:
            raise ValueError("the enabled objectives need a teacher model")
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self._teacher = [teacher] if teacher is not None else []  # a list hides it from nn.Module registration
        warm = training.lambda_warmup
        self.warmup = LambdaWarmup(warmup_steps=warm.steps, kind=warm.kind, start=warm.start)
        self.zclip = ZClip(max_norm=training.grad_clip)
        self.dlm_generator = torch.Generator().manual_seed(seed)
        self.last_loss: torch.Tensor | None = None
        self.last_parts: dict[str, torch.Tensor] = {}
        self._clip_stats: dict[str, float] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._val_sums: torch.Tensor | None = None
        self.compile_blocks = compile_blocks
        self.integer_matmul = integer_matmul
        self._compiled: list[CompiledBlocks] = []
        self._fitting = False

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher, or None when no objective needs one."""
        return self._teacher[0] if self._teacher else None

    # ------------------------------------------------------------------------------------ setup

    def configure_optimizers(self) -> dict[str, Any]:
        """The recipe's optimizer over the student's trainable parameters and the WSD schedule, stepped per step."""
        optimizer = build_optimizer(self.student, self.training_cfg.optimizer)
        scheduler = build_scheduler(optimizer, self.training_cfg.schedule, self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        # Lightning calls this once the processes are up; only the FSDP strategy sets a device mesh.
        if self._device_mesh is not None:
            shard_student(self.student, self._device_mesh["data_parallel"])

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_train_start(self) -> None:
        # The lambda of the step about to run: `start` on a fresh run, the saved value on a resume.
        self._set_lambda()
        if self.compile_blocks and not self._compiled:
            # Attention KD hooks its capture layer each step; that block stays eager (compile.py).
            skip = [self.training_cfg.kd.attention_layer] if self.objectives.needs_qkv else []
            self._compiled = [CompiledBlocks(m, skip) for m in (self.student, self.teacher) if m is not None]
        self._compiled_on(True)
        self._fitting = True

    def on_train_end(self) -> None:
        self._compiled_on(False)
        self._fitting = False
        set_integer_matmul(self.student, False)

    def _set_lambda(self) -> None:
        """Write the lambda of the step about to run; the int8 product only where that lambda is exactly 1."""
        set_quant_lambda(self.student, self.warmup.value)
        set_integer_matmul(self.student, self.integer_matmul and self.warmup.value == 1.0)

    def on_validation_start(self) -> None:
        self._compiled_on(False)  # eager under no_grad: other row counts would only add compiles

    def on_validation_end(self) -> None:
        self._compiled_on(self._fitting)

    def _compiled_on(self, on: bool) -> None:
        for blocks in self._compiled:
            blocks.on() if on else blocks.off()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

    # ------------------------------------------------------------------------------------- step

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """One optimizer step over `batch` (all of the step's micro-batches)."""
        step = self.global_step  # optimizer steps completed before this one
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        needs = self.objectives.needs_at(step, self.max_steps)
        micro_batches = _split(batch, self.training_cfg.grad_accumulation)

        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with self._backward_sync(last):
                out = self.micro_step_loss(micro, step, needs)
                self.manual_backward(out.loss / len(micro_batches))
            total += out.loss.detach() / len(micro_batches)
            for name, value in out.parts.items():
                parts[name] = parts.get(name, 0.0) + value / len(micro_batches)
                weighted[name] = weighted.get(name, 0.0) + out.weighted[name] / len(micro_batches)
        # Logged and guarded numbers describe the global batch (one all-reduce under data parallelism).
        total, parts, weighted = mean_over_ranks(self.trainer.strategy, total, parts, weighted)
        self.last_loss, self.last_parts = total, parts

        self._clip_stats = None
        optimizer.step()  # runs on_before_optimizer_step hooks (NaN guard, then ZClip) before updating
        if self._clip_stats is None:
            raise RuntimeError(
                f"{type(optimizer.optimizer).__name__}.step() did not call its closure, so Lightning's "
                "on_before_optimizer_step hooks (NaN guard, ZClip) never ran; the optimizer must evaluate the closure"
            )
        scheduler.step()
        lam = self.warmup.value
        self.warmup.step()
        self._set_lambda()

        self._log_step(total, parts, weighted, out.weights, lam, optimizer, rows=batch["input_ids"].shape[0])
        return {"loss": total}

    def micro_step_loss(self, batch: dict[str, torch.Tensor], step: int, needs: Requirements):
        """Forwards and the combined loss (a LossOutput) of one micro-batch at optimizer step `step`.

        use_cache=False: HF defaults to the config's True, which would build a KV cache that
        training never reads (and hand the compiled blocks a Cache object to trace).
        """
        ids, labels, positions = batch["input_ids"], batch["labels"], batch.get("position_ids")
        layer = self.training_cfg.kd.attention_layer
        inputs = LossInputs(input_ids=ids, labels=labels)
        if needs.teacher:
            with torch.no_grad(), self._qkv(self.teacher, needs.qkv, layer) as teacher_qkv:
                t_out = self.teacher(input_ids=ids, position_ids=positions, output_hidden_states=needs.hidden_states, use_cache=False)
            inputs.teacher_logits = t_out.logits
            inputs.teacher_hidden_states = t_out.hidden_states
            inputs.teacher_qkv = dict(teacher_qkv) if needs.qkv else None
        with self._qkv(self.student, needs.qkv, layer) as student_qkv:
            s_out = self.student(input_ids=ids, position_ids=positions, output_hidden_states=needs.hidden_states, use_cache=False)
        inputs.logits = s_out.logits
        inputs.hidden_states = s_out.hidden_states
        inputs.qkv = dict(student_qkv) if needs.qkv else None
        if needs.dlm_forward:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
            noisy, mask, t, maskable = dlm_inputs_for_rank(self.objectives, ids.cpu(), labels.cpu(), self.dlm_generator, rank, world)
            inputs.dlm_logits = self.student(input_ids=noisy.to(ids.device), position_ids=positions, use_cache=False).logits
            inputs.dlm_mask, inputs.dlm_t, inputs.dlm_maskable = mask.to(ids.device), t.to(ids.device), maskable.to(ids.device)
        return self.objectives.compute(inputs, step, self.max_steps)

    def last_step_metrics(self) -> dict[str, float]:
        """Loss and its parts at the last step this process ran (empty before the first step)."""
        if self.last_loss is None:
            return {}
        return {"loss": float(self.last_loss), **{name: float(v) for name, v in self.last_parts.items()}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Gradients are final here (accumulated, all-reduced); the NaN guard callback already ran.
        self._clip_stats = self.zclip.step(self.student)

    @staticmethod
    def _qkv(model: nn.Module, wanted: bool, layer: int) -> contextlib.AbstractContextManager:
        return capture_qkv(model, layer) if wanted else contextlib.nullcontext({})

    def _backward_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Skip the DDP gradient all-reduce on every micro-batch but the last of a step."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return contextlib.nullcontext() if last_micro_batch or block is None else block()

    def _log_step(self, total, parts, weighted, weights, lam, optimizer, rows: int) -> None:
        metrics: dict[str, float] = {"train/loss": float(total), "quant/lambda": lam}
        for name, value in parts.items():
            metrics[f"train/{name}"] = float(value)
            metrics[f"train/{name}_weighted"] = float(weighted[name])
        metrics.update({f"weight/{name}": w for name, w in weights.items()})
        for group in optimizer.param_groups:
            metrics[f"lr/{group.get('name', 'group')}"] = group["lr"]
        metrics["grad/norm"] = self._clip_stats["grad_norm"]
        metrics["grad/clipped_to"] = self._clip_stats["clipped_to"]
        metrics["grad/z"] = self._clip_stats["z"]
        qk = getattr(optimizer.optimizer, "last_qk_clip", None)
        metrics.update({f"qk_clip/{k}": v for k, v in (qk or {}).items()})
        log_to_loggers(self.trainer, metrics)
        self.log("loss", total, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=rows)

    # ------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(max(len(self.val_names), 1), 2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accumulate the summed next-token NLL and token count of one batch of held-out rows."""
        nll, count = token_nll(self.student, batch, self.eos_token_id)
        self._val_sums[dataloader_idx, 0] += nll.double()
        self._val_sums[dataloader_idx, 1] += count

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        metrics: dict[str, float] = {}
        for i, name in enumerate(self.val_names):
            loss = float(sums[i, 0] / sums[i, 1].clamp(min=1))
            metrics[f"val/{name}/loss"] = loss
            metrics[f"val/{name}/ppl"] = math.exp(min(loss, 700.0))
        loss = float(sums[:, 0].sum() / sums[:, 1].sum().clamp(min=1))
        metrics.update({"val/loss": loss, "val/ppl": math.exp(min(loss, 700.0))})
        log_to_loggers(self.trainer, metrics)

    # ------------------------------------------------------------------------------- checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.pop("state_dict", None)  # the model folder beside the trainer state holds the weights
        checkpoint[CHECKPOINT_KEY] = {
            "step": self.global_step,
            "lambda_warmup": self.warmup.state_dict(),
            "zclip": self.zclip.state_dict(),
            "dlm_generator": self.dlm_generator.get_state(),
            "rng": capture_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}  # nothing to load: the student was built from the model folder
        state = checkpoint[CHECKPOINT_KEY]
        self.warmup.load_state_dict(state["lambda_warmup"])
        self.zclip.load_state_dict(state["zclip"])
        self.dlm_generator.set_state(state["dlm_generator"])
        self._pending_rng = state["rng"]
