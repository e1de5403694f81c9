"""Devices, precision and the data-parallel strategy for Lightning's Trainer, and what FSDP changes.

`trainer_settings(cfg)` turns the `compute` config into Trainer arguments:

    precision   auto = bf16-mixed on CUDA, fp32 ("32-true") on CPU; bf16-if-native = bf16-mixed on CUDA
                and on CPUs that multiply bf16 in hardware (AVX512-BF16 or AMX), fp32 elsewhere
    devices     auto = every visible GPU (1 on CPU); under torchrun, the processes torchrun started per node
    strategy    one process: single device; more: `compute.strategy` (auto = DDP on one node, FSDP on many)

Design choices:
- FSDP is FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's ModelParallelStrategy with a
  1-D data-parallel mesh over every rank. Measured with Lightning 2.6 / torch 2.13: Lightning's
  FSDPStrategy (FSDP1) refuses a CPU accelerator, while ModelParallelStrategy runs on CPU with gloo,
  so the same code path is tested on CPU and used on GPUs.
- Sharding plan (`shard_student`): each decoder layer is one FSDP unit, the rest (embeddings, final
  norm, a tied lm_head) is the root unit. The frozen teacher is not sharded (it is not a registered
  submodule; every rank keeps a full copy for its forward under no_grad).
- Micro-batches but the last skip the gradient reduce-scatter (`block_backward_sync`, the same hook
  DDP offers), so a step with gradient accumulation communicates once, as under DDP.
- Checkpoints stay in the single-process format: `full_state_dict` gathers the sharded weights (a
  collective every rank must enter) into plain tensors on rank 0, tied weights as one tensor, and
  Lightning's trainer state is saved as one full file (`save_distributed_checkpoint=False`).
- Under torchrun (multi-node SkyPilot jobs) torchrun owns the process layout: devices defaults to
  LOCAL_WORLD_SIZE, and `compute.num_nodes` must equal WORLD_SIZE / LOCAL_WORLD_SIZE, so a config
  that disagrees with the launcher fails with a message instead of a hang in process-group setup.
- `auto` keeps CPU runs in fp32, so tests and small CPU runs stay exact and comparable across
  machines. `bf16-if-native` is for CPU runs that want speed: on a 2-core AVX512-BF16 EPYC, bf16
  autocast made a SmolLM2-135M distillation step 1.8x faster (6.8 s -> 3.7 s at 4x128 tokens,
  torch 2.13), while a CPU without bf16 instructions would emulate it and get slower.
- Muon / MuonClip orthogonalize whole weight matrices; FSDP hands the optimizer row shards, so those
  optimizers are refused under FSDP rather than silently orthogonalizing shards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from wrinklefree_core.config.compose import ConfigError
from wrinklefree_core.config.run import RunConfig

_TORCHRUN_VARS = ("LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK", "LOCAL_RANK")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def precision_for(use_cuda: bool, requested: str) -> str:
    """Lightning precision string for `compute.precision` (see the module docstring)."""
    if requested == "auto":
        return "bf16-mixed" if use_cuda else "32-true"
    if requested == "bf16-if-native":
        return "bf16-mixed" if use_cuda or cpu_has_native_bf16() else "32-true"
    return requested


def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """True when an external launcher (torchrun / torchelastic) started this process as one rank."""
    env = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in env or all(k in env for k in _TORCHRUN_VARS)


def process_layout(cfg: RunConfig, use_cuda: bool, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(devices per node, nodes) for the Trainer; checks them against torchrun's layout when it launched us."""
    env = dict(os.environ) if env is None else env
    requested = cfg.compute.devices
    nodes = cfg.compute.num_nodes
    if launched_by_torchrun(env):
        local = int(env["LOCAL_WORLD_SIZE"])
        world = int(env["WORLD_SIZE"])
        if requested != "auto" and requested != local:
            raise ConfigError(f"compute.devices={requested} but torchrun started {local} processes per node; use compute.devices=auto")
        if world != local * nodes:
            raise ConfigError(
                f"torchrun runs {world // max(local, 1)} node(s) of {local} processes but compute.num_nodes={nodes}; "
                "set compute.num_nodes to torchrun's --nnodes"
            )
        return local, nodes
    if requested == "auto":
        return (torch.cuda.device_count() if use_cuda else 1), nodes
    if use_cuda and requested > torch.cuda.device_count():
        raise ConfigError(f"compute.devices={requested} but only {torch.cuda.device_count()} CUDA devices are visible")
    return requested, nodes


def strategy_name(cfg: RunConfig, world_size: int) -> str:
    """"single", "ddp" or "fsdp" for `world_size` processes (see the module docstring)."""
    if world_size == 1:
        return "single"
    if cfg.compute.strategy == "auto":
        return "fsdp" if cfg.compute.num_nodes > 1 else "ddp"
    return cfg.compute.strategy


def trainer_settings(cfg: RunConfig) -> dict[str, Any]:
    """accelerator, devices, num_nodes, precision and strategy for Lightning's Trainer."""
    cuda = torch.cuda.is_available()
    if cfg.compute.device == "cuda" and not cuda:
        raise ConfigError("compute.device=cuda but no CUDA device is available; use compute.device=auto or cpu")
    use_cuda = cfg.compute.device == "cuda" or (cfg.compute.device == "auto" and cuda)
    devices, nodes = process_layout(cfg, use_cuda)
    name = strategy_name(cfg, devices * nodes)
    if name == "fsdp" and cfg.training.optimizer.type != "adamw":
        raise ConfigError(
            f"training.optimizer.type={cfg.training.optimizer.type} needs whole weight matrices, which FSDP shards; "
            "use compute.strategy=ddp or training.optimizer.type=adamw"
        )
    if name != "single" and cfg.training.auto_batch_size:
        raise ConfigError(
            "training.auto_batch_size=true searches on one device; run it with compute.devices=1 and set "
            "training.batch_size to the size it prints (the per-device micro-batch)"
        )
    return {
        "accelerator": "gpu" if use_cuda else "cpu",
        "devices": devices,
        "num_nodes": nodes,
        "precision": precision_for(use_cuda, cfg.compute.precision),
        "strategy": build_strategy(name, devices * nodes),
    }


def world_size(settings: dict[str, Any]) -> int:
    """Number of training processes the settings describe."""
    return settings["devices"] * settings["num_nodes"]


def build_strategy(name: str, world: int):
    """The Lightning strategy (object or name) for `strategy_name`'s answer."""
    if name == "single":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy()
    return _fsdp2_strategy(world)


def _fsdp2_strategy(world: int):
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        """ModelParallelStrategy on a data-parallel-only mesh, with DDP's `block_backward_sync` hook and
        optimizer states numbered as one process numbers them (`optimizer_ids`)."""

        def optimizer_state(self, optimizer) -> dict[str, Any]:
            state = super().optimizer_state(optimizer)  # ids in module order, on rank 0 only
            if not state:
                return state
            position = {id(p): i for i, p in enumerate(_params_of(optimizer))}
            module_order = {i: position[id(p)] for i, p in enumerate(self.model.parameters()) if id(p) in position}
            return rekey_optimizer_state(state, module_order)

        def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            # Lightning 2.6 drops fit(weights_only=...) on this restore-after-setup path (it passes None);
            # the trainer state holds tensors and plain values only (run_state.py), so never unpickle more.
            weights_only = True if weights_only is None else weights_only
            checkpoint = torch.load(self.broadcast(checkpoint_path), map_location="cpu", weights_only=weights_only)
            checkpoint.pop("state_dict", None)  # weights come from the model folder (see module.py)
            names = {id(p): n for n, p in self.model.named_parameters()}
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=self.lightning_module.strict_loading)
            for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
                by_name = rekey_optimizer_state(state, {i: names[id(p)] for i, p in enumerate(_params_of(optimizer))})
                set_optimizer_state_dict(self.model, optimizer, optim_state_dict=by_name, options=options)
            return checkpoint

        @contextlib.contextmanager
        def block_backward_sync(self) -> Iterator[None]:
            units = [m for m in self.lightning_module.modules() if hasattr(m, "set_requires_gradient_sync")]
            for unit in units:
                unit.set_requires_gradient_sync(False, recurse=False)
            try:
                yield
            finally:
                for unit in units:
                    unit.set_requires_gradient_sync(True, recurse=False)

    return FSDP2Strategy(data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=False)


def _params_of(optimizer) -> list:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrap LightningOptimizer
    return [p for group in optimizer.param_groups for p in group["params"]]


def rekey_optimizer_state(state: dict[str, Any], key_of: dict[int, Any]) -> dict[str, Any]:
    """`state` (an optimizer state dict keyed by int ids) with every id `i` replaced by `key_of[i]`.

    One process numbers optimizer states by position in the optimizer's param groups; Lightning's
    FSDP path numbers them by position in `module.parameters()` and loads them by parameter name.
    FSDP2Strategy saves with the optimizer's numbering, so trainer_state.pt is identical in format
    to a one-process run's and a run can resume with another device count or strategy.
    """
    groups = [{**g, "params": [key_of[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {key_of[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def is_sharded(model: nn.Module) -> bool:
    """True when `model`'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF causal LM (model.model.layers), the FSDP units."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return list(layers)


def shard_student(model: nn.Module, mesh) -> None:
    """fully_shard every decoder layer, then the model root (module docstring); no-op if already sharded."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's weights as plain CPU tensors on global rank 0 (None elsewhere); a collective when sharded.

    Unsharded models return None on every rank: the caller then reads `model.state_dict()` itself.
    Tied parameters come back as one tensor under each name, so the checkpoint writer stores them
    once, exactly as for an unsharded model.
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:
        return None  # cpu_offload keeps the gathered tensors on rank 0 only
    first_name: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = first_name.setdefault(id(p), name)
        if key != name and key in full:
            full[name] = full[key]
    return full


def dlm_inputs_for_rank(objectives, ids: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, rank: int, world: int):
    """DLM (noisy, mask, t, maskable) for this rank's rows of a data-parallel micro-batch.

    Every rank's generator is in the same state, so each draws the masks of the whole global
    micro-batch (its own rows tiled into every rank's place; the draws do not depend on the ids) and
    keeps its own slice: the ranks mask exactly what one process with the whole batch would, and
    the generators stay in step for the checkpoint.
    """
    if world == 1:
        return objectives.dlm_inputs(ids, labels, generator=generator)
    rows = ids.shape[0]
    drawn = objectives.dlm_inputs(ids.repeat(world, 1), labels.repeat(world, 1), generator=generator)
    return tuple(x[rank * rows : (rank + 1) * rows] for x in drawn)


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """Within the block, `model.state_dict()` returns the full weights on rank 0 (a collective to enter).

    Lets the single-process checkpoint writer save a sharded model unchanged; a no-op when `model`
    is not sharded. Other ranks must not write inside the block (their state_dict is still sharded).
    """
    full = full_state_dict(model)
    if full is None:
        yield
        return
    model.state_dict = lambda *args, **kwargs: full  # an instance attribute shadows the method
    try:
        yield
    finally:
        del model.state_dict


def mean_over_ranks(strategy, total: torch.Tensor, parts: dict[str, torch.Tensor], weighted: dict[str, torch.Tensor]):
    """(total, parts, weighted) averaged over the data-parallel ranks with one all-reduce.

    Each rank's loss is the mean over its rows; rows hold the same number of tokens, so the mean of
    the ranks' means is the global batch's loss, the number one process would log.
    """
    if strategy.world_size == 1:
        return total, parts, weighted
    names = list(parts)
    flat = [total, *(parts[n] for n in names), *(weighted[n] for n in names)]
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=total.device).reshape(()) for v in flat])
    mean = strategy.reduce(stacked, reduce_op="mean")
    k = len(names)
    return mean[0], {n: mean[1 + i] for i, n in enumerate(names)}, {n: mean[1 + k + i] for i, n in enumerate(names)}
