"""The stage commands on gs:// against a real fake-gcs-server: outputs uploaded with their marker, gs://
inputs downloaded, the default bucket output, a bucket mount sealed, and an unreachable bucket.

Everything runs through `wrinklefree_core.cli.main`, the entry point a local run and a cloud job use,
on tiny_llama (a random 2-layer model that converts in about a second). Nothing of GCS is mocked:
an unreachable bucket is a port nobody listens on.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.storage.conftest import EMULATOR_VAR
from wrinklefree_core import cli
from wrinklefree_core.artifacts.manifest import read_manifest
from wrinklefree_core.storage.artifacts import resolve_input
from wrinklefree_core.storage.gcs import GCSStore
from wrinklefree_core.storage.manifest import MARKER_NAME
from wrinklefree_core.storage.mounts import MOUNTS_ENV

FAST = ["gcs.max_retries=2", "gcs.retry_backoff_s=0.05", "gcs.timeout_s=5"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads make tiny models much slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def objects(bucket: str, prefix: str) -> set[str]:
    """Object names under `prefix/`, relative to it (read with a plain client, behind the store's back)."""
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    return {b.name[len(prefix) + 1 :] for b in client.list_blobs(bucket, prefix=prefix + "/")}


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """cli.main(argv + --json): (exit code, the JSON result or None, stderr)."""
    code = cli.main([*argv, "--json"])
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if lines else None, captured.err


def test_convert_export_eval_through_the_bucket(bucket, tmp_path, capsys):
    ckpt = f"gs://{bucket}/runs/tiny-bitnet"
    code, result, err = run(capsys, "convert", "model=tiny_llama", f"out={ckpt}", *FAST)
    assert code == 0, err
    assert result["out"] == ckpt
    assert {MARKER_NAME, "config.json", "model.safetensors", "stage.json"} <= objects(bucket, "runs/tiny-bitnet")

    gguf = f"gs://{bucket}/runs/tiny-gguf/tiny.gguf"
    code, result, err = run(capsys, "export", f"checkpoint={ckpt}", "format=gguf", "export.verify=false", f"out={gguf}", *FAST)
    assert code == 0, err
    assert result["out"] == gguf
    assert objects(bucket, "runs/tiny-gguf") == {"tiny.gguf", "export_report.txt", "stage.json", MARKER_NAME}
    exported = resolve_input(f"gs://{bucket}/runs/tiny-gguf")
    assert read_manifest(exported).inputs == {"checkpoint": ckpt}  # the URI, not this machine's cache path
    assert read_manifest(exported).config["checkpoint"] == ckpt

    hf = f"gs://{bucket}/runs/tiny-hf"
    code, _, err = run(capsys, "export", f"checkpoint={ckpt}", "format=hf", f"out={hf}", *FAST)
    assert code == 0, err
    assert {MARKER_NAME, "config.json", "stage.json"} <= objects(bucket, "runs/tiny-hf")

    code, result, err = run(capsys, "eval", f"checkpoint={ckpt}", "training.seq_len=32", "data.val_fraction=0.01", *FAST)
    assert code == 0, err
    assert result["checkpoint"] == ckpt and result["kind"] == "bitnet"
    assert all(r["tokens"] > 0 for r in result["sources"].values())


def test_gcs_enabled_chooses_the_default_output(bucket, capsys):
    code, result, err = run(capsys, "convert", "model=tiny_llama", "gcs.enabled=true", f"gcs.bucket={bucket}", "gcs.prefix=team", *FAST)
    assert code == 0, err
    assert result["out"] == f"gs://{bucket}/team/tiny_llama-bitnet"
    assert MARKER_NAME in objects(bucket, "team/tiny_llama-bitnet")


def test_model_folder_read_from_the_bucket(bucket, tmp_path, capsys):
    """model=gs://... (an HF folder) converts, and stage.json names the URI as the source model."""
    from wrinklefree_core.config import compose
    from wrinklefree_core.models.sources import materialize

    hf_folder = materialize(compose("convert", ["model=tiny_llama"]).model)
    source = f"gs://{bucket}/models/tiny-hf"
    GCSStore().upload_folder(hf_folder, source)
    out = tmp_path / "converted"
    code, result, err = run(capsys, "convert", f"model={source}", f"out={out}", *FAST)
    assert code == 0, err
    assert result["out"] == str(out)
    manifest = read_manifest(out)
    assert manifest.inputs == {"source_model": source}
    assert manifest.config["model"]["path"] == source


def test_incomplete_input_is_refused(bucket, tmp_path, capsys):
    """A folder whose writer never wrote the marker is not read, and the error says why."""
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    client.bucket(bucket).blob("runs/half/config.json").upload_from_string(b"{}")
    code, _, err = run(capsys, "export", f"checkpoint=gs://{bucket}/runs/half", "format=hf", f"out={tmp_path / 'x'}", *FAST)
    assert code == 2
    assert "incomplete upload" in err and "Re-run the stage" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_bucket_is_retried_then_reported_and_the_output_kept(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv(EMULATOR_VAR, f"http://127.0.0.1:{free_port()}")  # an emulator that is down
    monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wrinklefree_core.storage"):
        code, _, err = run(capsys, "convert", "model=tiny_llama", "out=gs://wf-down/runs/tiny", *FAST)
    elapsed = time.monotonic() - started
    assert code == 2
    assert "after 3 attempts" in err and "storage emulator" in err and "is running" in err
    # The finished checkpoint is still on this machine, and the error says where and how to upload it.
    local = Path(err.split("intact at ")[1].split(";")[0])
    assert (local / "model.safetensors").is_file() and (local / "stage.json").is_file()
    assert "python -m wrinklefree_core.storage.push" in err
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    print(f"unreachable bucket reported after {elapsed:.1f} s (convert included)")


def test_bucket_mount_output_is_sealed(bucket, tmp_path, monkeypatch, capsys):
    """A folder inside a declared bucket mount is written in place, then gets its marker through the API.

    Here the "mount" is a plain folder, so sealing has to upload every file itself; through a real mount
    most files are already in the bucket and are skipped.
    """
    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setenv(MOUNTS_ENV, f"{mount}=gs://{bucket}")
    out = mount / "runs" / "tiny"
    code, result, err = run(capsys, "convert", "model=tiny_llama", f"out={out}", *FAST)
    assert code == 0, err
    assert result["out"] == str(out)
    assert not (out / MARKER_NAME).exists()  # the marker went to the bucket, not through the folder
    assert objects(bucket, "runs/tiny") == {p.name for p in out.iterdir()} | {MARKER_NAME}
    assert GCSStore().is_complete(f"gs://{bucket}/runs/tiny")


def test_credentials_are_not_in_the_config_or_the_output(bucket, tmp_path, monkeypatch, capsys):
    """Credentials come from the environment only: no config field holds one, and a run prints none."""
    from wrinklefree_core.config import compose
    from wrinklefree_core.config.flatten import flatten_config

    secret = "-----BEGIN PRIVATE KEY-----wf-test-secret"
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps({"type": "service_account", "private_key": secret}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    params = flatten_config(compose("convert", ["gcs.enabled=true", f"gcs.bucket={bucket}"]).model_dump(mode="json"))
    secret_like = re.compile(r"credential|secret|password|private_key|api_key|access_key|auth|(?<!mask_)token", re.I)
    assert not [k for k in params if secret_like.search(k)]
    code, _, err = run(capsys, "convert", "model=tiny_llama", f"out=gs://{bucket}/runs/c", *FAST)
    assert code == 0, err
    printed = capsys.readouterr()
    assert secret not in err + printed.out + printed.err
    assert secret not in json.dumps(read_manifest(resolve_input(f"gs://{bucket}/runs/c")).model_dump())


def test_train_reads_its_teacher_from_the_bucket_and_writes_to_it(bucket, capsys):
    """Distillation with teacher=gs://... and out=gs://...: both named by their URIs in stage.json."""
    from wrinklefree_core.config import compose
    from wrinklefree_core.models.sources import materialize

    teacher = f"gs://{bucket}/models/tiny-hf"
    GCSStore().upload_folder(materialize(compose("train", ["model=tiny_llama"]).model), teacher)
    out = f"gs://{bucket}/runs/distill"
    small = ["training.seq_len=32", "training.batch_size=2", "data.val_fraction=0.01", "training.val_every=100000"]
    code, result, err = run(
        capsys, "train", "model=tiny_llama", "training=bitdistill_full", f"teacher={teacher}", "training.max_steps=2", *small, f"out={out}", *FAST
    )
    assert code == 0, err
    assert result["out"] == out and result["metrics"]["step"] == 2
    manifest = read_manifest(resolve_input(out))
    assert manifest.inputs["teacher"] == teacher
    assert manifest.config["teacher"] == teacher
