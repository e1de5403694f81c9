"""Training to gs:// against fake-gcs-server: checkpoints mirrored to the bucket as they are written, and
an interrupted run resumed exactly on a "fresh machine" (an empty cache: no local state, no MLflow run).

The run is `wrinklefree train` in a subprocess, killed (-9) once the bucket holds a complete
checkpoint; the resumed run gets a different WRINKLEFREE_CACHE, so everything it resumes from comes
from the bucket. A marker-less step folder planted beyond the real one stands for an upload that died;
it must be ignored. CPU, fp32, one thread: the final weights and every loss logged after the resume
equal an uninterrupted run's bit for bit (the same standard as tests/training/test_resume.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.storage.conftest import EMULATOR_VAR, make_bucket, start_emulator
from wrinklefree_core import cli as wf_cli
from wrinklefree_core.config import compose
from wrinklefree_core.storage.artifacts import resolve_input
from wrinklefree_core.storage.checkpoints import RemoteCheckpoints
from wrinklefree_core.storage.manifest import MARKER_NAME
from wrinklefree_core.training.run_state import RunState
from wrinklefree_core.stages.train import run_train

STEPS = 40
EVERY = 4
SMALL = ["training.seq_len=32", "training.batch_size=2", "training.grad_accumulation=2", "data.val_fraction=0.01", "training.val_every=100000"]


def overrides(out: str) -> list[str]:
    return [
        "model=tiny_llama",
        "training=unified",
        f"training.max_steps={STEPS}",
        f"training.checkpoint_every={EVERY}",
        "training.optimizer.lr=2e-3",
        *SMALL,
        "gcs.max_retries=2",
        "gcs.retry_backoff_s=0.05",
        f"out={out}",
    ]


def env_with_cache(cache: Path) -> dict[str, str]:
    env = dict(os.environ, WRINKLEFREE_CACHE=str(cache), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WRINKLEFREE_MLFLOW_STORE", None)  # the default store under `cache`, which losses() reads
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wrinklefree_core.cli", *args]


def client() -> storage.Client:
    return storage.Client(project="test", credentials=AnonymousCredentials())


def complete_steps(bucket: str, prefix: str) -> list[int]:
    names = [b.name for b in client().list_blobs(bucket, prefix=prefix + "/")]
    return sorted(int(n.split("step-")[1][:9]) for n in names if n.endswith("/" + MARKER_NAME))


def losses(cache: Path, out: str) -> dict[int, float]:
    """train/loss by step of the MLflow run tagged with `out` in the store under `cache`."""
    mlflow = MlflowClient(f"sqlite:///{cache / 'mlflow' / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("wrinklefree")
    (run,) = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.out = '{out}'")
    return {p.step: p.value for p in mlflow.get_metric_history(run.info.run_id, "train/loss")}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_remote_checkpoints_keep_the_newest_complete_one(bucket, gcs_config, tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "w.bin").write_bytes(b"x" * 1000)
    (folder / "run.json").write_text("{}")
    remote = RemoteCheckpoints(f"gs://{bucket}/r/train.state/checkpoints", gcs_config)
    assert remote.latest() is None
    remote.upload(folder, 4)
    client().bucket(bucket).blob("r/train.state/checkpoints/step-000000099/run.json").upload_from_string(b"{}")
    assert remote.latest()[0] == 4  # the marker-less step 99 is not a checkpoint
    remote.upload(folder, 8)
    assert remote.steps() == {8: True}  # step 4 and the dead upload are gone
    got = remote.download(8, tmp_path / "restored")
    assert (got / "model" / "w.bin").read_bytes() == b"x" * 1000 and not (got / MARKER_NAME).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".download")] == []
    remote.clear()
    assert remote.steps() == {}


def test_killed_run_resumes_from_the_bucket_on_a_fresh_machine(bucket, emulator, tmp_path, one_thread, monkeypatch):
    monkeypatch.delenv("WRINKLEFREE_MLFLOW_STORE", raising=False)  # the default store under ref_cache, which losses() reads
    out = f"gs://{bucket}/runs/train"
    state_prefix = "runs/train.state/checkpoints"

    reference = tmp_path / "reference"
    ref_cache = tmp_path / "cache"  # the `emulator` fixture's WRINKLEFREE_CACHE: the in-process run logs there
    ref = run_train(compose("train", overrides(str(reference))))

    first_cache = tmp_path / "machine-1"
    proc = subprocess.Popen(cli("train", *overrides(out)), env=env_with_cache(first_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not complete_steps(bucket, state_prefix):
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before uploading a checkpoint:\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, "no checkpoint reached the bucket in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; the test proves nothing"
    (killed_at,) = complete_steps(bucket, state_prefix)
    assert 0 < killed_at < STEPS and killed_at % EVERY == 0
    assert MARKER_NAME not in {b.name.rsplit("/", 1)[-1] for b in client().list_blobs(bucket, prefix="runs/train/")}

    # An upload that died after writing some files: a higher step, but no marker. Never resumed from.
    client().bucket(bucket).blob(f"{state_prefix}/step-{STEPS - 1:09d}/run.json").upload_from_string(b'{"step": 39}')

    fresh = tmp_path / "machine-2"
    started = time.monotonic()
    resumed = subprocess.run(cli("train", *overrides(out), "--json"), env=env_with_cache(fresh), capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint of step {killed_at}" in resumed.stdout
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["out"] == out and result["metrics"]["step"] == STEPS
    assert result["metrics"]["loss"] == ref.metrics["loss"]

    # Every loss the resumed run logged equals the uninterrupted run's at that step.
    ref_losses, got = losses(ref_cache, str(reference)), losses(fresh, out)
    assert sorted(got) == list(range(killed_at + 1, STEPS + 1))
    assert {s: ref_losses[s] for s in got} == got

    # The published checkpoint is the uninterrupted run's, bit for bit.
    final = resolve_input(out)
    expected, actual = load_file(str(reference / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)

    # The bucket keeps what the local rotation keeps: the final checkpoint, complete; the dead upload is gone.
    assert complete_steps(bucket, state_prefix) == [STEPS]
    assert RemoteCheckpoints(f"gs://{bucket}/{state_prefix}").steps() == {STEPS: True}
    print(f"killed at step {killed_at}; resumed on a fresh cache and finished in {seconds:.1f} s")


def test_bucket_lost_during_training(tmp_path, monkeypatch, capsys, caplog, one_thread):
    """The emulator dies after the first checkpoint upload: training finishes on local state, the
    failed uploads are reported, and the final publish fails with a clear error; nothing local is lost."""
    own = start_emulator()  # this test kills its server, so it must not be the shared one
    try:
        monkeypatch.setenv(EMULATOR_VAR, own.url)
        monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
        name = make_bucket(own.url)
        state_prefix = "runs/train.state/checkpoints"

        def kill_after_first_checkpoint() -> None:
            while not complete_steps(name, state_prefix):
                time.sleep(0.01)
            own.server._process.kill()  # not stop(): that would also unset STORAGE_EMULATOR_HOST

        threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
        with caplog.at_level(logging.WARNING):
            code = wf_cli.main(["train", *overrides(f"gs://{name}/runs/train")])
        err = capsys.readouterr().err
    finally:
        own.stop()
    assert code == 2, err
    assert "after 3 attempts" in err and "storage emulator" in err
    assert any("could not upload the checkpoint" in r.getMessage() for r in caplog.records)
    local = Path(err.split("intact at ")[1].split(";")[0])
    assert (local / "model.safetensors").is_file() and (local / "stage.json").is_file()
    assert RunState(local).read_meta()["step"] == STEPS
