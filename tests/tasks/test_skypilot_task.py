"""The SkyPilot task of a stage: what it asks for, that it survives SkyPilot's own parser, and that its
run command really runs the stage; plus what launching does on a machine with no cloud.

Design choices:
- Tasks are real `sky.Task` objects built offline (no credentials needed); nothing of SkyPilot is
  mocked. Launching cannot succeed here (no cloud, no internet beyond PyPI), so the launch test
  checks that it fails fast with the right error, against a real SkyPilot API server started in an
  isolated runtime folder on a free port and stopped afterwards.
- The run command is executed with bash in the repository root, with the task's envs and the
  SKYPILOT_* variables a one-node job gets, on a tiny model: the same bytes a cluster would run.
- The torchrun line is checked two ways: parsed as words, and expanded by bash with `torchrun`
  shadowed by a function that prints its arguments (real torchrun would start a rendezvous).
- The bucket mount is played by a local folder (the run line's /checkpoints and the job's mount
  declaration both point there) and the bucket by fake-gcs-server: the stage must seal its output
  with the completion marker, and the read-back must refuse an output without one.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import sky
from sky import exceptions as sky_exc
from sky.utils import common_utils

from tasks.skypilot_launch import (
    SkyJobFailedError,
    SkyLaunchError,
    SkyNotConfiguredError,
    SkyRetryableError,
    _LineStream,
    classify_error,
)
from tasks.skypilot_task import (
    CHECKPOINT_MOUNT,
    REPO_ROOT,
    build_sky_task,
    default_cluster_name,
    mount_path_for,
    render_task_config,
    run_command_for,
    stage_command,
)
from tasks.stage_exec import fetch_records
from tasks.stage_plan import StagePlan
from tests.storage.conftest import bucket, emulator, emulator_server  # noqa: F401 - fixtures
from wrinklefree_core.config import compose
from wrinklefree_core.artifacts.manifest import read_manifest
from wrinklefree_core.storage.gcs import GCSStore, IncompleteUploadError
from wrinklefree_core.storage.manifest import MARKER_NAME
from wrinklefree_core.storage.mounts import MOUNTS_ENV

MULTI = [
    "compute=skypilot_h100x8_2nodes",
    "compute.cloud=gcp",
    "compute.region=us-central1",
    "compute.use_spot=true",
    "compute.disk_size_gb=512",
    "gcs.bucket=wf-test-bucket",
    "out=/checkpoints/runs/r1/train",
    "checkpoint=/checkpoints/runs/r1/convert",
    "training.max_steps=20",
    # Spaces, quotes and braces: must reach the stage as one argument.
    "data.sources=[{name: plays, path: 'package:shakespeare', weight: 2.0}]",
]


def task_for(stage: str, overrides: list[str], **kwargs) -> sky.Task:
    command, args = stage_command(stage, overrides)
    return build_sky_task(compose(command, args), stage, overrides, **kwargs)


def last_line_words(run: str) -> list[str]:
    return shlex.split(run.strip().splitlines()[-1])


def one_node_env(task: sky.Task) -> dict[str, str]:
    """The environment a one-node SkyPilot job sees: the task's envs plus SKYPILOT_* variables."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.update(task.envs)
    env.update(
        SKYPILOT_NUM_NODES="1",
        SKYPILOT_NODE_RANK="0",
        SKYPILOT_NODE_IPS="127.0.0.1",
        SKYPILOT_NUM_GPUS_PER_NODE="1",
        SKYPILOT_TASK_ID="sky-2026-01-01-00-00-00-000000_wf-test_1",
        SKYPILOT_CLUSTER_INFO=json.dumps({"cluster_name": "wf-test", "num_nodes": 1}),
    )
    return env


# --- the task ---------------------------------------------------------------------------------


def test_single_node_task():
    overrides = ["model=tiny_llama", "compute=skypilot_h100", f"out={CHECKPOINT_MOUNT}/tiny", "gcs.bucket=wf-test-bucket"]
    task = task_for("convert", overrides, envs={"WRINKLEFREE_MLFLOW_PARENT_RUN_ID": "abc123"})

    (res,) = task.resources
    assert res.accelerators == {"H100": 1}
    assert res.cloud is None and res.region is None
    assert res.disk_size == 256 and res.use_spot is False
    assert task.num_nodes == 1
    assert task.workdir == str(REPO_ROOT)
    assert task.envs["WRINKLEFREE_STAGE"] == "convert"
    assert task.envs["WRINKLEFREE_MLFLOW_PARENT_RUN_ID"] == "abc123"
    assert task.envs["PYTHONUNBUFFERED"] == "1"
    assert "bash scripts/setup.sh" in task.setup
    run = task.run.strip().splitlines()
    assert run[:2] == ["set -euo pipefail", "source .venv/bin/activate"]
    assert last_line_words(task.run) == ["wrinklefree", "convert", *overrides, "compute.backend=local"]
    assert "torchrun" not in task.run


def test_multi_node_task_runs_torchrun_with_fsdp():
    task = task_for("train", MULTI)

    (res,) = task.resources
    assert res.accelerators == {"H100": 8}
    assert str(res.cloud) == "GCP" and res.region == "us-central1"
    assert res.disk_size == 512 and res.use_spot is True
    assert task.num_nodes == 2

    words = last_line_words(task.run)
    assert words[0] == "torchrun"
    module_at = words.index("-m")
    options = dict(w.split("=", 1) for w in words[1:module_at])
    assert options == {
        "--nnodes": "$SKYPILOT_NUM_NODES",
        "--node_rank": "$SKYPILOT_NODE_RANK",
        "--nproc_per_node": "$SKYPILOT_NUM_GPUS_PER_NODE",
        "--master_addr": "$MASTER_ADDR",
        "--master_port": "29500",
    }
    assert words[module_at + 1 : module_at + 3] == ["wrinklefree_core.cli", "train"]
    assert words[module_at + 3 :] == [*MULTI, "compute.backend=local", "compute.strategy=fsdp"]
    assert 'MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"' in task.run


def test_multi_node_run_expands_skypilot_variables(tmp_path: Path):
    """bash expands the torchrun line as a worker node would; torchrun itself only prints its argv."""
    task = task_for("train", MULTI)
    env = one_node_env(task)
    env.update(SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK="1", SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_NODE_IPS="10.0.0.7\n10.0.0.9")
    shim = 'torchrun() { printf "%s\\n" "$@"; }\n'
    proc = subprocess.run(["bash", "-c", shim + task.run], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.splitlines()
    assert argv[:5] == ["--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=10.0.0.7", "--master_port=29500"]
    assert argv[5:9] == ["-m", "wrinklefree_core.cli", "train", MULTI[0]]
    assert argv[-3:] == [MULTI[-1], "compute.backend=local", "compute.strategy=fsdp"]


def test_lrc_and_distill_run_train_with_their_recipe():
    overrides = ["gcs.bucket=wf-test-bucket", "out=/checkpoints/lrc", "checkpoint=gs://wf-test-bucket/train"]
    assert last_line_words(task_for("lrc", overrides).run)[1:4] == ["train", "training=lrc_calibration", overrides[0]]
    assert last_line_words(task_for("distill", overrides).run)[1:3] == ["train", "training=bitdistill_full"]
    with pytest.raises(ValueError, match="unknown stage 'trian'"):
        stage_command("trian", [])


def test_round_trip_through_skypilot_yaml():
    task = task_for("train", MULTI, envs={"WRINKLEFREE_MLFLOW_PARENT_RUN_ID": "abc123"})
    config = task.to_yaml_config()
    again = sky.Task.from_yaml_config(json.loads(json.dumps(config)))
    assert again.to_yaml_config() == config
    for key in ("num_nodes", "run", "setup", "envs", "workdir", "resources", "file_mounts"):
        assert again.to_yaml_config()[key] == config[key], key
    assert config["resources"]["infra"] == "gcp/us-central1"
    assert again.num_nodes == 2 and again.envs["WRINKLEFREE_MLFLOW_PARENT_RUN_ID"] == "abc123"


def test_bucket_mount_only_with_a_bucket():
    with_bucket = task_for("convert", ["model=tiny_llama", "gcs.bucket=wf-test-bucket", "out=/checkpoints/x"])
    storage = with_bucket.storage_mounts[CHECKPOINT_MOUNT]
    assert storage.source == "gs://wf-test-bucket"
    assert storage.mode == sky.StorageMode.MOUNT_CACHED
    assert with_bucket.to_yaml_config()["file_mounts"][CHECKPOINT_MOUNT]["source"] == "gs://wf-test-bucket"

    without = task_for("convert", ["model=tiny_llama", "out=gs://elsewhere/x"])
    assert not without.storage_mounts and not without.file_mounts
    assert not without.to_yaml_config().get("file_mounts")


def test_refuses_artifacts_the_cluster_cannot_keep_or_see():
    with pytest.raises(ValueError, match="deleted with the cluster"):
        task_for("convert", ["model=tiny_llama", "out=outputs/tiny"])
    with pytest.raises(ValueError, match="deleted with the cluster"):
        task_for("convert", ["model=tiny_llama"])  # the default out is a local folder
    with pytest.raises(ValueError, match="only with gcs.bucket"):
        task_for("convert", ["model=tiny_llama", "out=/checkpoints/x"])
    with pytest.raises(ValueError, match="cannot see"):
        task_for("export", ["checkpoint=/home/me/ckpt", "out=gs://b-1/x.gguf"])
    # Keeping the cluster keeps a local output; eval writes nothing.
    task_for("convert", ["model=tiny_llama", "out=outputs/tiny", "compute.teardown=false"])
    task_for("eval", ["checkpoint=gs://b-1/ckpt"])


def test_refuses_a_config_the_overrides_do_not_give():
    overrides = ["model=tiny_llama", "gcs.bucket=wf-test-bucket", "out=/checkpoints/a"]
    cfg = compose("convert", overrides).model_copy(update={"out": "/checkpoints/b"})
    with pytest.raises(ValueError, match="out: '/checkpoints/b'"):
        build_sky_task(cfg, "convert", overrides)
    # What the job changes itself is not a difference.
    build_sky_task(compose("convert", [*overrides, "compute.backend=skypilot"]), "convert", overrides)


def test_refuses_credentials_in_envs():
    with pytest.raises(ValueError, match="looks like a credential"):
        task_for("convert", ["model=tiny_llama", "out=gs://b-1/x"], envs={"HF_TOKEN": "hf_abc"})


def test_mount_paths_and_cluster_names():
    cfg = compose("convert", ["gcs.bucket=wf-test-bucket"])
    assert mount_path_for("gs://wf-test-bucket/runs/r1/convert", cfg) == "/checkpoints/runs/r1/convert"
    assert mount_path_for("gs://wf-test-bucket", cfg) == "/checkpoints"
    with pytest.raises(ValueError):
        mount_path_for("gs://wf-test-bucket-2/x", cfg)
    for name in (default_cluster_name("lrc"), default_cluster_name("Distill", "Run_2026/11/25 #3" * 4)):
        common_utils.check_cluster_name_is_valid(name)
        assert name.startswith("wf-")


def test_run_command_for_matches_the_task():
    overrides = ["model=tiny_llama", "out=gs://b-1/x"]
    cfg = compose("convert", overrides)
    assert render_task_config(cfg, "convert", overrides)["run"] == run_command_for(cfg, "convert", overrides)


# --- the run command, executed ----------------------------------------------------------------


def test_run_command_converts_a_tiny_model_locally(tmp_path: Path):
    out = tmp_path / "tiny-bitnet"
    task = task_for("convert", ["model=tiny_llama", f"out={out}", "compute=skypilot_h100", "compute.teardown=false"])
    start = time.monotonic()
    proc = subprocess.run(["bash", "-c", task.run], cwd=REPO_ROOT, env=one_node_env(task), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "stage.json").is_file() and (out / "model.safetensors").is_file()
    manifest = read_manifest(out)
    assert manifest.stage == "convert"
    assert manifest.config["compute"]["backend"] == "local"  # the job ran the stage on its node
    assert manifest.config["compute"]["accelerators"] == "H100:1"
    print(f"run command took {time.monotonic() - start:.1f} s")


def test_run_command_seals_its_output_in_the_bucket_mount(bucket, tmp_path: Path):  # noqa: F811
    overrides = ["model=tiny_llama", "compute=skypilot_h100", f"gcs.bucket={bucket}", f"out={CHECKPOINT_MOUNT}/runs/tiny"]
    task = task_for("convert", overrides)
    assert task.envs[MOUNTS_ENV] == f"{CHECKPOINT_MOUNT}=gs://{bucket}"
    folder_uri = f"gs://{bucket}/runs/tiny"
    plan = StagePlan("convert", overrides, compose("convert", overrides), "0" * 16, folder_uri, folder_uri)

    # What a job that died after the mount flushed some files leaves behind: no marker, so no artifact.
    mount = tmp_path / "checkpoints"
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "stage.json").write_text("{}")
    GCSStore().client.bucket(bucket).blob("runs/tiny/stage.json").upload_from_filename(str(partial / "stage.json"))
    with pytest.raises(IncompleteUploadError, match="partial artifact"):
        fetch_records(plan)

    env = one_node_env(task)
    env[MOUNTS_ENV] = f"{mount}=gs://{bucket}"
    run = task.run.replace(CHECKPOINT_MOUNT, str(mount))
    proc = subprocess.run(["bash", "-c", run], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = {p.name for p in (mount / "runs" / "tiny").iterdir()}
    assert {"model.safetensors", "stage.json"} <= written and MARKER_NAME not in written
    listing = {info.path for info in GCSStore().list_prefix(folder_uri)}
    assert listing == written | {MARKER_NAME}
    assert read_manifest(fetch_records(plan)).stage == "convert"


# --- launching without a cloud ----------------------------------------------------------------

_LAUNCH_DRIVER = r"""
import json, sys, time
import sky
from wrinklefree_core.config import compose
from tasks.skypilot_task import build_sky_task
from tasks.skypilot_launch import launch_stage, SkyLaunchError

start = time.monotonic()
sky.api_start()  # what sky.launch would do on its own; timed apart from the launches
print(json.dumps({"label": "api_start", "seconds": time.monotonic() - start}), flush=True)
mounted = ["model=tiny_llama", "compute=skypilot_h100", "gcs.bucket=wf-test-bucket", "out=/checkpoints/tiny"]
unmounted = ["model=tiny_llama", "compute=skypilot_h100", "out=gs://wf-test-bucket/tiny"]
for label, overrides in (("h100", mounted), ("cpu-mount", mounted), ("cpu", unmounted)):
    task = build_sky_task(compose("convert", overrides), "convert", overrides)
    if label.startswith("cpu"):  # no accelerator, so no catalog download: SkyPilot gets further
        task.set_resources(sky.Resources(cpus="1+"))
    lines, start = [], time.monotonic()
    try:
        launch_stage(task, "wf-test-" + label, stream_logs=lines.append, teardown=True, retries=2, retry_wait_s=300)
        error, cause, message = None, None, ""
    except SkyLaunchError as exc:
        error, cause, message = type(exc).__name__, type(exc.cause).__name__, str(exc)
    print(json.dumps({"label": label, "error": error, "cause": cause, "message": message,
                      "seconds": time.monotonic() - start, "lines": lines}), flush=True)
"""


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    """A free API-server port whose derived queue-manager port is free too: SkyPilot's server also
    listens on 50000 + (DEFAULT_QUEUE_MANAGER_PORT - 50000 + offset) % 10000 (offset = port minus its
    default), and refuses to start when that one is taken (seen once in a full suite run)."""
    from sky.server import common as server_common
    from sky.server.requests.queues import mp_queue

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        offset = port - server_common.DEFAULT_SERVER_PORT
        queue_port = 50000 + (mp_queue.DEFAULT_QUEUE_MANAGER_PORT - 50000 + offset) % 10000
        if queue_port != port and _port_is_free(queue_port):
            return port
    raise RuntimeError("no free pair of API-server and queue-manager ports found")


def _api_servers_on(port: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "sky.server.server" in cmdline and f"--port={port}" in cmdline:
            found.append(proc)
    return found


@pytest.fixture
def isolated_sky(tmp_path: Path):
    """Environment for a SkyPilot client with its own runtime folder and API-server port; the server
    it auto-starts is stopped (`sky api stop`, then by pid if that failed) when the test ends."""
    home = tmp_path / "home"
    home.mkdir()
    port = _free_port()
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        SKY_RUNTIME_DIR=str(home),
        SKYPILOT_API_SERVER_LOCAL_PORT=str(port),
        SKYPILOT_DISABLE_USAGE_COLLECTION="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    for name in ("SKYPILOT_API_SERVER_ENDPOINT", "SKYPILOT_CONFIG", "SKYPILOT_PROJECT_CONFIG"):
        env.pop(name, None)
    yield env
    subprocess.run([sys.executable, "-c", "import sky; sky.api_stop()"], env=env, capture_output=True, timeout=120)
    for proc in _api_servers_on(port):
        proc.kill()
    assert not _api_servers_on(port)


def test_launch_without_cloud_fails_fast_and_clearly(isolated_sky: dict[str, str]):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH_DRIVER], cwd=REPO_ROOT, env=isolated_sky, capture_output=True, text=True, timeout=500
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["label"]: r for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))}
    for label in ("h100", "cpu-mount", "cpu"):
        r = results[label]
        # Not retried (a retry waits 300 s), and the message says what to do.
        assert r["error"] == "SkyNotConfiguredError", r
        assert "sky check" in r["message"]
        assert r["seconds"] < 120, r
    # Three different refusals from SkyPilot, one answer. An accelerator needs the catalog, which
    # SkyPilot downloads (no internet here: CloudError); a gs:// mount needs GCP enabled
    # (ResourcesUnavailableError); a bare CPU task reaches the cloud check (NoCloudAccessError).
    # With internet but no credentials the first two end at the later checks instead.
    assert results["h100"]["cause"] in ("CloudError", "ResourcesUnavailableError", "NoCloudAccessError")
    assert results["cpu-mount"]["cause"] in ("ResourcesUnavailableError", "NoCloudAccessError")
    assert results["cpu"]["cause"] == "NoCloudAccessError"
    times = ", ".join(f"{k} {r['seconds']:.1f} s" for k, r in results.items())
    print(f"without a cloud: {times}; {elapsed:.1f} s in all")


# --- error mapping and log lines ----------------------------------------------------------------


def test_classify_real_skypilot_exceptions():
    capacity = sky_exc.ResourcesUnavailableError("no H100 in us-central1-a", failover_history=[RuntimeError("zone a")])
    assert isinstance(classify_error(capacity), SkyRetryableError)
    infeasible = sky_exc.ResourcesUnavailableError("Catalog does not contain any instances satisfying the request: 2x GCP({'H100': 16}).")
    mapped = classify_error(infeasible)
    assert type(mapped) is SkyLaunchError and "sky gpus list" in str(mapped)
    gcs_off = sky_exc.ResourcesUnavailableError("Storage 'store: gcs' specified, but GCP access is disabled. To fix, enable GCP by running `sky check`.")
    assert isinstance(classify_error(gcs_off), SkyNotConfiguredError)
    assert isinstance(classify_error(sky_exc.ClusterNotUpError("preempted")), SkyRetryableError)
    assert isinstance(classify_error(sky_exc.KubeAPIUnreachableError("k8s down")), SkyRetryableError)
    for exc in (
        sky_exc.NoCloudAccessError("Cloud access is not set up."),
        sky_exc.CloudUserIdentityError("no identity"),
        sky_exc.CloudError("Failed to resolve host", "requests", "ConnectionError"),
    ):
        mapped = classify_error(exc)
        assert isinstance(mapped, SkyNotConfiguredError) and "sky check" in str(mapped) and mapped.cause is exc
    assert isinstance(classify_error(sky_exc.CloudError("read timed out", "requests", "ReadTimeout")), SkyRetryableError)
    assert type(classify_error(sky_exc.InvalidClusterNameError("Bad_Name"))) is SkyLaunchError
    assert classify_error(KeyError("not from sky")) is None
    failed = SkyJobFailedError("x", job_id=3, status="FAILED", log_tail=["Traceback", "boom"])
    assert classify_error(failed) is failed


def test_line_stream_emits_whole_clean_lines():
    lines: list[str] = []
    stream = _LineStream(lines.append, keep=2)
    stream.write("\x1b[32mstep 1\x1b[0m loss 3.2\nstep ")
    stream.write("2 loss 3.1\r\n\nprogress 50%\rprogress 100%")
    stream.finish()
    assert lines == ["step 1 loss 3.2", "step 2 loss 3.1", "progress 50%", "progress 100%"]
    assert list(stream.tail) == ["progress 50%", "progress 100%"]
