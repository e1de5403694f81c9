"""Data-parallel training on CPU: two gloo processes (DDP, FSDP2) against one process with the same global batch.

- DDP and FSDP runs of `wrinklefree train` (2 processes x batch_size 2) end with the weights, losses
  and gradient norms of one process with batch_size 4: the ranks together see the same rows and
  DLM masks, and the gradients are averaged. Only fp32 reduction order differs.
- The FSDP run is killed after its first checkpoint and resumed, so resume under FSDP is part of
  the comparison; its checkpoints have the one-process keys, shapes and optimizer numbering.
- The sharded gradient norm and finiteness check run in two gloo processes on an FSDP2-sharded
  model and are compared with the unsharded model's numbers.
- Settings: precision per device, strategy per process count, torchrun's layout, refusals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.training.common import cli_command, history, run_cli, unified_run
from tests.training.test_resume import wait_for
from wrinklefree_core.config import compose
from wrinklefree_core.config.compose import ConfigError
from wrinklefree_core.training import distributed
from wrinklefree_core.training.batch_size import _trial, search_batch_size
from wrinklefree_core.training.grad_norm import global_grad_norm, grads_all_finite
from wrinklefree_core.training.run_state import MODEL_DIR, RUN_META, TRAINER_STATE, RunState

STEPS = 6
EVERY = 3
TOL = 1e-4
# Per-step numbers: fp32 sums in another order move a weight across a ternary rounding boundary now
# and then, which shifts later losses and norms by ~1e-4 relative (measured 1.2e-4 after 5 steps).
CURVE_TOL = 1e-3


def overrides(converted_dir: Path, out: Path, batch_size: int) -> list[str]:
    return unified_run(converted_dir, out, STEPS, EVERY, f"training.batch_size={batch_size}", "training.grad_accumulation=2")


@pytest.fixture(scope="module")
def single_run(converted_dir: Path, tmp_path_factory) -> Path:
    """One process, batch_size 4: the reference the 2-process runs must reproduce."""
    out = tmp_path_factory.mktemp("single") / "out"
    proc = run_cli("train", *overrides(converted_dir, out, 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_same_run(out: Path, ref: Path) -> None:
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOL
    for key in ("train/loss", "train/ce", "train/dlm", "grad/norm", "throughput/tokens"):
        # A step logged just before a kill is logged again by the resumed run: keep the last value.
        got, want = dict(history(out, key)), dict(history(ref, key))
        assert sorted(got) == sorted(want) and STEPS in got, key  # train/dlm starts with its curriculum phase
        assert [got[s] for s in sorted(got)] == pytest.approx([want[s] for s in sorted(want)], rel=CURVE_TOL, abs=TOL), key
    stage, ref_stage = json.loads((out / "stage.json").read_text()), json.loads((ref / "stage.json").read_text())
    assert stage["metrics"]["val/loss"] == pytest.approx(ref_stage["metrics"]["val/loss"], rel=CURVE_TOL)
    # Rank 0 alone writes: the output and state folders hold what one process writes.
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "out.state"]
    assert sorted(p.name for p in RunState(out).root.rglob("*")) == sorted(p.name for p in RunState(ref).root.rglob("*"))


def assert_same_trainer_state(out: Path, ref: Path) -> None:
    """Same keys, optimizer numbering and tensor shapes as the one-process trainer state."""
    a = torch.load(RunState(out).last / TRAINER_STATE, weights_only=False)
    b = torch.load(RunState(ref).last / TRAINER_STATE, weights_only=False)
    assert sorted(a) == sorted(b) and "state_dict" not in a
    oa, ob = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]
    for k in ob["state"]:
        assert oa["state"][k]["exp_avg"].shape == ob["state"][k]["exp_avg"].shape
        assert torch.allclose(oa["state"][k]["exp_avg"], ob["state"][k]["exp_avg"], rtol=1e-3, atol=1e-5)
    assert a["wrinklefree"]["zclip"]["buffer"] == pytest.approx(b["wrinklefree"]["zclip"]["buffer"], rel=CURVE_TOL)


def test_ddp_two_processes_equal_one_process(converted_dir: Path, single_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("train", *overrides(converted_dir, out, 2), "compute.devices=2", "compute.strategy=ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(out, single_run)
    assert_same_trainer_state(out, single_run)


def test_fsdp_killed_and_resumed_equals_one_process(converted_dir: Path, single_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["train", *overrides(converted_dir, out, 2), "compute.devices=2", "compute.strategy=fsdp"]
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(RunState(out).last / RUN_META, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank it started
    proc.wait()
    first = json.loads((RunState(out).last / RUN_META).read_text())["step"]
    assert first < STEPS
    # The FSDP checkpoint's model folder is a plain one-process BitNet checkpoint.
    ref_keys = {k: v.shape for k, v in load_file(single_run / "model.safetensors").items()}
    assert {k: v.shape for k, v in load_file(RunState(out).last / MODEL_DIR / "model.safetensors").items()} == ref_keys

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(out, single_run)
    assert_same_trainer_state(out, single_run)


# ------------------------------------------------------------------------------ sharded grad norm


def _sharded_norm_worker(rank: int, init_file: str, results: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same full model on both ranks
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3, bias=False), torch.nn.LayerNorm(3))
    reference = [p.detach().clone() for p in model.parameters()]
    mesh = init_device_mesh("cpu", (2,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    grads = []
    for p, full in zip(model.parameters(), reference):
        p.grad = distributed_like(p, full * 3.0 - 1.0)  # a known gradient, sharded like the parameter
        grads.append(p.grad)
    out = {"norm": global_grad_norm(grads), "finite": grads_all_finite(grads)}
    expected = torch.linalg.vector_norm(torch.cat([(t * 3.0 - 1.0).flatten() for t in reference]).double())
    out["expected"] = float(expected)
    if rank == 1:
        grads[1].to_local().view(-1)[0] = float("nan")  # a NaN in one rank's shard only
    out["finite_after_nan"] = grads_all_finite(grads)
    torch.save(out, f"{results}.{rank}")
    dist.destroy_process_group()


def distributed_like(param, full: torch.Tensor):
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, param.device_mesh, param.placements)


def test_sharded_grad_norm_and_finiteness_are_global(tmp_path: Path) -> None:
    init = str(tmp_path / "process-group")
    mp.spawn(_sharded_norm_worker, args=(init, str(tmp_path / "r")), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"r.{rank}") for rank in range(2)]
    for r in results:
        assert r["norm"] == pytest.approx(r["expected"], rel=1e-6)
        assert r["finite"] is True and r["finite_after_nan"] is False
    assert results[0]["norm"] == results[1]["norm"]


def test_unsharded_grad_norm_needs_no_process_group() -> None:
    grads = [torch.ones(3, 4), torch.full((2,), 2.0)]
    assert global_grad_norm(grads) == pytest.approx((12 + 8) ** 0.5)
    assert grads_all_finite(grads) and not grads_all_finite([torch.tensor([float("inf")])])


# ------------------------------------------------------------------------------------- settings


def test_precision_bf16_mixed_on_gpu_fp32_on_cpu(monkeypatch) -> None:
    assert distributed.precision_for(True, "auto") == "bf16-mixed"
    assert distributed.precision_for(False, "auto") == "32-true"
    assert distributed.precision_for(True, "32-true") == "32-true"
    assert distributed.precision_for(False, "bf16-mixed") == "bf16-mixed"
    assert distributed.trainer_settings(compose("train", []))["precision"] == "32-true"  # this machine: CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    settings = distributed.trainer_settings(compose("train", []))
    assert (settings["accelerator"], settings["precision"], settings["strategy"]) == ("gpu", "bf16-mixed", "auto")


def test_bf16_if_native_follows_the_hardware(monkeypatch) -> None:
    # The probe reads the CPU flags the kernel reports.
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    if flags:
        assert distributed.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_tile"})
    for native in (True, False):
        monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda native=native: native)
        assert distributed.precision_for(True, "bf16-if-native") == "bf16-mixed"
        assert distributed.precision_for(False, "bf16-if-native") == ("bf16-mixed" if native else "32-true")
        assert distributed.trainer_settings(compose("train", ["compute.precision=bf16-if-native"]))["precision"] == (
            "bf16-mixed" if native else "32-true"
        )


def test_strategy_follows_process_count_and_config(monkeypatch) -> None:
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    for var in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.trainer_settings(compose("train", ["compute.strategy=fsdp"]))["strategy"] == "auto"  # 1 process
    ddp = distributed.trainer_settings(compose("train", ["compute.devices=2"]))
    assert (ddp["devices"], ddp["num_nodes"], type(ddp["strategy"])) == (2, 1, DDPStrategy)
    fsdp = distributed.trainer_settings(compose("train", ["compute.devices=2", "compute.strategy=fsdp"]))
    assert isinstance(fsdp["strategy"], ModelParallelStrategy)
    assert distributed.strategy_name(compose("train", ["compute.num_nodes=2"]), 16) == "fsdp"
    with pytest.raises(ConfigError, match="auto_batch_size"):
        distributed.trainer_settings(compose("train", ["compute.devices=2", "training.auto_batch_size=true"]))
    with pytest.raises(ConfigError, match="FSDP"):
        distributed.trainer_settings(compose("train", ["compute.devices=2", "compute.strategy=fsdp", "training.optimizer.type=muon"]))


def test_torchrun_layout_is_what_skypilot_jobs_launch() -> None:
    # torchrun --nnodes=$SKYPILOT_NUM_NODES --nproc_per_node=$SKYPILOT_NUM_GPUS_PER_NODE (tasks/skypilot_task.py)
    env = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "8", "WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1"}
    cfg = compose("train", ["compute.num_nodes=2"])
    assert distributed.process_layout(cfg, use_cuda=True, env=env) == (8, 2)
    assert distributed.strategy_name(cfg, 16) == "fsdp"
    with pytest.raises(ConfigError, match="num_nodes"):
        distributed.process_layout(compose("train", []), use_cuda=True, env=env)
    with pytest.raises(ConfigError, match="devices"):
        distributed.process_layout(compose("train", ["compute.num_nodes=2", "compute.devices=4"]), use_cuda=True, env=env)


# ------------------------------------------------------------------------------- auto batch size


def test_batch_size_search_stops_at_cap_and_on_failure() -> None:
    tried: list[int] = []

    def fits_up_to(limit):
        def fits(rows):
            tried.append(rows)
            return rows <= limit

        return fits

    assert search_batch_size(fits_up_to(37), 4, 1024) == 32 and tried == [4, 8, 16, 32, 64]
    assert search_batch_size(fits_up_to(10**6), 4, 16) == 16
    assert search_batch_size(fits_up_to(3), 16, 1024) == 2
    assert search_batch_size(fits_up_to(0), 16, 1024) == 0


def test_auto_batch_size_trial_runs_the_real_step_on_cpu(converted_dir: Path) -> None:
    from wrinklefree_core.objectives import ObjectiveManager
    from wrinklefree_core.training.inputs import load_checkpoint_student
    from wrinklefree_core.training.module import BitNetTrainModule

    cfg = compose("train", [f"model={converted_dir}", "training=unified", "training.max_steps=4"])
    student = load_checkpoint_student(converted_dir)
    objectives = ObjectiveManager.from_config(cfg.training, mask_token_id=student.tokenizer.mask_token_id)
    module = BitNetTrainModule(student.model, cfg.training, objectives)
    vocab = student.model.get_input_embeddings().num_embeddings
    assert _trial(module, 2, 16, vocab, torch.device("cpu"), bf16=False)
    assert all(p.grad is None for p in student.model.parameters())  # the trial leaves no gradients behind
