"""Influence remixing inside a training run: `training.influence.enabled=true` on a two-source mixture
(Shakespeare and a noise corpus, probe = Shakespeare's held-out rows) moves the weights toward
Shakespeare, logs them, and a run killed right after an update resumes with exactly the same weights,
batches and model as the uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.training.common import cli_command, history, run_cli, unified_run
from tests.training.test_resume import wait_for
from wrinklefree_core.config.training import InfluenceConfig
from wrinklefree_core.data.mixture import MixtureSampler
from wrinklefree_core.training.callbacks import InfluenceRemixing
from wrinklefree_core.config import compose
from wrinklefree_core.artifacts.manifest import read_manifest
from wrinklefree_core.training.run_state import RUN_META, TRAINER_STATE, RunState
from wrinklefree_core.stages.train import run_train

STEPS = 16
EVERY = 4
SOURCES = ("shakespeare", "noise")


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory) -> Path:
    """30 documents of random lowercase 'words': text the Shakespeare probe has nothing in common with."""
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    for i in range(30):
        words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(250)]
        (folder / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n")
    return folder


def overrides(converted_dir: Path, noise: Path, out: Path) -> list[str]:
    return unified_run(
        converted_dir,
        out,
        STEPS,
        EVERY,
        # Bigger batches and a strong first update: a batch drawn with the wrong weights is then
        # all but certain to differ in its rows, so the resume comparison below can tell.
        "training.batch_size=8",
        f"data.sources=[{{name: shakespeare, path: 'package:shakespeare', weight: 0.5}}, {{name: noise, path: '{noise}', weight: 0.5}}]",
        "training.influence.enabled=true",
        f"training.influence.every_n_steps={EVERY}",
        "training.influence.probe=shakespeare",
        "training.influence.step_size=3",
        "training.influence.smoothing=0.1",
    )


@pytest.fixture(scope="module")
def reference(converted_dir: Path, noise_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("influence") / "out"
    run_train(compose("train", overrides(converted_dir, noise_dir, out)))
    return out


def test_weights_move_toward_the_probe_source_and_are_logged(reference: Path):
    weights = {name: history(reference, f"data/weight/{name}") for name in SOURCES}
    scores = {name: dict(history(reference, f"data/influence/{name}")) for name in SOURCES}
    updates = list(range(EVERY, STEPS + 1, EVERY))
    assert [s for s, _ in weights["shakespeare"]] == [0, *updates]  # the start, then every update
    assert sorted(scores["noise"]) == updates
    for (_, a), (_, b) in zip(weights["shakespeare"], weights["noise"]):
        assert a + b == pytest.approx(1.0) and 0.05 - 1e-9 <= b <= 0.9 + 1e-9
    curve = [w for _, w in weights["shakespeare"]]
    assert curve[0] == pytest.approx(0.5) and all(b > a for a, b in zip(curve, curve[1:])), curve
    assert all(scores["shakespeare"][s] > scores["noise"][s] for s in updates), scores
    assert len(history(reference, "data/influence_seconds")) == len(updates)
    # stage.json records the weights of the last update, the mixture a follow-up run should start from
    final = read_manifest(reference).metrics
    assert final["data/weight/shakespeare"] == pytest.approx(curve[-1]) and final["data/weight/noise"] == pytest.approx(weights["noise"][-1][1])


def test_killed_run_resumes_with_the_same_weights(converted_dir: Path, noise_dir: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["train", *overrides(converted_dir, noise_dir, out)]
    state = RunState(out)
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    wait_for(state.last / RUN_META, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; the test proves nothing"
    killed_at = state.read_meta()["step"]
    assert killed_at < STEPS
    saved = torch.load(state.last / TRAINER_STATE, weights_only=False, map_location="cpu")
    remix = next(v for k, v in saved["callbacks"].items() if "InfluenceRemixing" in k)
    assert remix["scheduled"] is not None, "the update of the checkpoint's step must be in its state"

    resumed = run_cli(*args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    for key in [f"data/weight/{n}" for n in SOURCES] + [f"data/influence/{n}" for n in SOURCES] + ["train/loss"]:
        ref = dict(history(reference, key))
        got = history(out, key)
        assert sorted({s for s, _ in got}) == sorted(ref), key
        mismatched = [(s, v, ref[s]) for s, v in got if v != ref[s]]
        assert not mismatched, f"{key} differs after resuming from step {killed_at}: {mismatched[:5]}"
    final_ref, final_got = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(final_ref[k], final_got[k]) for k in final_ref)


def test_loaded_update_waits_for_its_draw():
    """The checkpoint of step N holds the sampler after batch N; batch N+1 (prefetched before the update)
    keeps the old weights and N+2 gets the new ones, as in the uninterrupted run."""
    data = {"a": np.ones((10, 4), dtype=np.int32), "b": np.full((10, 4), 2, dtype=np.int32)}
    sampler = MixtureSampler(data, {"a": 0.5, "b": 0.5}, eos_token_id=0)
    for _ in range(4):
        sampler.sample(2)
    datamodule = type("DM", (), {"mixture": sampler, "setup": lambda self, stage=None: None})()
    callback = InfluenceRemixing(InfluenceConfig(enabled=True), datamodule)
    callback.load_state_dict({"scheduled": {"at_draw": 5, "weights": {"a": 0.9, "b": 0.1}}, "last_scores": {}})
    assert sampler.weights["a"] == pytest.approx(0.5)
    sampler.sample(2)  # batch 5
    assert sampler.weights["a"] == pytest.approx(0.5)
    sampler.sample(2)  # batch 6
    assert sampler.weights["a"] == pytest.approx(0.9)
