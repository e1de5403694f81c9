"""One writer per output: a second run on a live run's out= is refused with who holds it; a dead run's lock is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrinklefree_core.storage.locks import OutputBusyError, lock_path, output_lock

HOLD = """
import sys, time
from wrinklefree_core.storage.locks import output_lock
with output_lock(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_lock_in_the_same_process_is_refused_and_released_after(tmp_path: Path):
    out = tmp_path / "ckpt"
    with output_lock(out, "convert"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputBusyError, match=rf"out={out} is being written by another run \(pid {os.getpid()} on .*give this export another out="):
            with output_lock(out, "export"):
                pass
    assert not lock_path(out).exists()
    with output_lock(out, "convert"):  # free again
        pass


def test_a_killed_holder_leaves_no_lock(tmp_path: Path):
    out = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid} "):
            with output_lock(out, "train"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # kill -9 could not remove the file, but the kernel dropped its lock
    with output_lock(out, "train"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_other_ranks_of_a_distributed_run_do_not_lock(tmp_path: Path, monkeypatch):
    out = tmp_path / "ckpt"
    with output_lock(out, "train"):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with output_lock(out, "train"):
            pass


def test_a_second_training_run_on_a_live_runs_output_is_refused(tmp_path: Path, private_cache_env):
    private_cache_env("lock-cache")
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "wrinklefree_core.cli", "train", "model=tiny_llama", "training=unified",
        "training.max_steps=100000", "training.seq_len=32", "training.batch_size=2", "data.val_fraction=0.01",
        "training.val_every=100000", f"out={out}",
    ]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not lock_path(out).is_file() or not lock_path(out).read_text():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
        assert f"is being written by another run (pid {first.pid} on " in line and "another out=" in line, line
        assert "wrinklefree_core.cli train" in line or "cli.py train" in line, line
        assert first.poll() is None, "the refused run must not disturb the live one"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
