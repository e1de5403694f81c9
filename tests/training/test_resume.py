"""Exact resume: kill -9 a `wrinklefree train` process after its first checkpoint, run the same command
again, and get the run an uninterrupted process produces, step for step and bit for bit.

The recipe is `unified` with two accumulated micro-batches per step, which exercises every piece of
resumable state at once: the data mixture position, AdamW moments, the WSD schedule, the lambda warmup (still ramping at the kill), the
curriculum (DLM phases in mid-run), DLM masking randomness, ZClip statistics and the token count.
On CPU in fp32 with one thread every step is deterministic, so the comparison is exact.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.common import cli_command, history, run_cli, unified_run
from wrinklefree_core import cli
from wrinklefree_core.config import compose
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.training.run_state import MODEL_DIR, RUN_META, TRAINER_STATE, RunState
from wrinklefree_core.stages.train import run_train

STEPS = 40
EVERY = 4
CURVES = ("train/loss", "train/ce", "train/dlm", "grad/norm", "quant/lambda", "lr/adamw_decay", "throughput/tokens")


# The same run with every block compiled and the int8 product once lambda reaches 1.
COMPILED = ("compute.compile=true", "compute.int_matmul=true")


def overrides(converted_dir: Path, out: Path, *extra: str) -> list[str]:
    return unified_run(converted_dir, out, STEPS, EVERY, "training.batch_size=2", "training.grad_accumulation=2", *extra)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before writing {path}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def assert_loadable(state: RunState) -> int:
    """The published checkpoint is complete: model folder, trainer state and run.json all load."""
    assert state.has_checkpoint()
    load_bitnet_checkpoint(state.last / MODEL_DIR)
    trainer_state = torch.load(state.last / TRAINER_STATE, weights_only=True, map_location="cpu")
    assert "state_dict" not in trainer_state, "weights belong in the model folder, not in trainer_state.pt"
    assert trainer_state["optimizer_states"] and trainer_state["lr_schedulers"]
    meta = state.read_meta()
    assert meta["step"] == trainer_state["global_step"] and meta["step"] % EVERY == 0
    return meta["step"]


@pytest.fixture(scope="module")
def reference(converted_dir: Path, tmp_path_factory) -> Path:
    """The same command, never interrupted (run in this process)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    run_train(compose("train", overrides(converted_dir, out)))
    return out


@pytest.fixture(scope="module")
def compiled_reference(converted_dir: Path, tmp_path_factory) -> Path:
    """The compiled command, never interrupted (run in this process)."""
    out = tmp_path_factory.mktemp("uninterrupted-compiled") / "out"
    run_train(compose("train", overrides(converted_dir, out, *COMPILED)))
    return out


def test_killed_run_resumes_exactly(converted_dir: Path, reference: Path, tmp_path: Path):
    assert_resumes_exactly(converted_dir, reference, tmp_path)


def test_killed_compiled_run_resumes_exactly(converted_dir: Path, compiled_reference: Path, tmp_path: Path):
    assert_resumes_exactly(converted_dir, compiled_reference, tmp_path, *COMPILED)


def assert_resumes_exactly(converted_dir: Path, reference: Path, tmp_path: Path, *extra: str) -> None:
    out = tmp_path / "out"
    args = ["train", *overrides(converted_dir, out, *extra)]
    state = RunState(out)

    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    wait_for(state.last / RUN_META, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; the test proves nothing"
    assert not out.exists(), "the final checkpoint must only appear when training finishes"
    killed_at = assert_loadable(state)
    assert killed_at < STEPS

    resumed = run_cli(*args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert state.leftovers() == [], "temp or moved-aside checkpoint folders were left behind"
    assert assert_loadable(state) == STEPS

    # Same final step count and the same curve: every value logged for a step, by the killed process
    # or by the resumed one, equals the uninterrupted run's value for that step.
    expected_steps = list(range(1, STEPS + 1))
    for key in CURVES:
        ref = dict(history(reference, key))
        got = history(out, key)
        assert sorted({s for s, _ in got}) == sorted(ref) and (key == "train/dlm" or sorted(ref) == expected_steps), key
        mismatched = [(s, v, ref[s]) for s, v in got if v != ref[s]]
        assert not mismatched, f"{key} differs after resuming from step {killed_at}: {mismatched[:5]}"
    final_ref, final_got = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert final_ref.keys() == final_got.keys()
    assert all(torch.equal(final_ref[k], final_got[k]) for k in final_ref)


def test_finished_run_is_not_trained_again(converted_dir: Path, reference: Path):
    """Re-running a finished command rewrites the output from the last checkpoint without training."""
    before = load_file(str(reference / "model.safetensors"))
    steps_before = len(history(reference, "train/loss"))
    result = run_train(compose("train", overrides(converted_dir, reference)))
    assert result.metrics["step"] == STEPS
    assert len(history(reference, "train/loss")) == steps_before
    after = load_file(str(reference / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_changed_recipe_refuses_to_resume(converted_dir: Path, reference: Path, capsys):
    assert cli.main(["train", *overrides(converted_dir, reference), "training.optimizer.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "training.optimizer.lr" in err


def test_keep_state_false_deletes_the_state_once_the_output_is_written(converted_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = run_train(compose("train", [*overrides(converted_dir, out), "training.max_steps=2", "training.keep_state=false"]))
    assert result.metrics["step"] == 2
    assert load_bitnet_checkpoint(out)[0] is not None and not RunState(out).root.exists()


def test_resume_never_starts_over(converted_dir: Path, reference: Path, tmp_path: Path):
    """training.resume=never ignores (and deletes) the saved state and trains from step 0."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.copytree(RunState(reference).root, RunState(out).root)
    result = run_train(compose("train", [*overrides(converted_dir, out), "training.resume=never", "training.max_steps=2"]))
    assert result.metrics["step"] == 2 and result.metrics["tokens"] == 2 * 4 * 32
    assert RunState(out).read_meta()["step"] == 2


class _Payload:
    """What an attacker would put into a state file: unpickling it opens (creates) a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def copy_run(reference: Path, out: Path) -> RunState:
    shutil.copytree(reference, out)
    shutil.copytree(RunState(reference).root, RunState(out).root)
    return RunState(out)


def test_the_trainer_state_holds_only_tensors_and_plain_values(reference: Path):
    path = RunState(reference).last / TRAINER_STATE
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []


def test_a_crafted_trainer_state_is_refused_before_anything_unpickles_it(converted_dir: Path, reference: Path, tmp_path: Path, capsys):
    state = copy_run(reference, tmp_path / "out")
    trainer_state = torch.load(state.last / TRAINER_STATE, weights_only=True)
    marker = tmp_path / "payload-ran"
    trainer_state["wrinklefree"]["extra"] = _Payload(marker)
    torch.save(trainer_state, state.last / TRAINER_STATE)
    before = (state.last / TRAINER_STATE).read_bytes()
    assert cli.main(["train", *overrides(converted_dir, tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects (io.open)" in err and "training.resume=never" in err, err
    assert not marker.exists()
    assert (state.last / TRAINER_STATE).read_bytes() == before  # nothing deleted or rewritten


@pytest.mark.parametrize("damage", ["truncated trainer state", "truncated run.json", "run.json not a checkpoint's"])
def test_a_damaged_state_file_is_a_clear_error(converted_dir: Path, reference: Path, tmp_path: Path, capsys, damage: str):
    state = copy_run(reference, tmp_path / "out")
    if damage == "truncated trainer state":
        path = state.last / TRAINER_STATE
        path.write_bytes(path.read_bytes()[:200])
        expected = "is not a readable training state"
    elif damage == "truncated run.json":
        path = state.last / RUN_META
        path.write_text(path.read_text()[:50])
        expected = "is not readable"
    else:
        (state.last / RUN_META).write_text("[1, 2]")
        expected = "is not a checkpoint's run.json"
    assert cli.main(["train", *overrides(converted_dir, tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "training.resume=never" in err and "Traceback" not in err, err


def test_max_steps_below_the_checkpoint_is_refused(converted_dir: Path, reference: Path, capsys):
    before = (reference / "stage.json").read_bytes()
    assert cli.main(["train", *overrides(converted_dir, reference), "training.max_steps=10"]) == 2
    err = capsys.readouterr().err
    assert f"is at step {STEPS}, beyond training.max_steps=10" in err and f"training.max_steps={STEPS}" in err, err
    assert (reference / "stage.json").read_bytes() == before
