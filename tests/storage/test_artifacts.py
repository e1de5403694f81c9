"""The stage-facing API: the same calls work for a local folder and for gs:// (on the emulator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.storage.artifacts import default_output_uri, publish_output, resolve_input, staging_dir
from wrinklefree_core.uri import StorageError


def write(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def read(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


FILES = {"config.json": b"{}", "weights/model.safetensors": bytes(range(256)) * 4096}


def test_local_input_is_returned_as_is(tmp_path):
    assert resolve_input(tmp_path / "ckpt") == tmp_path / "ckpt"
    assert resolve_input(f"file://{tmp_path}/ckpt") == tmp_path / "ckpt"
    with pytest.raises(StorageError, match="Unsupported URI scheme"):
        resolve_input("s3://bucket/ckpt")


def test_local_output_staged_in_place_is_a_no_op(tmp_path):
    out = tmp_path / "out"
    work = staging_dir(str(out))
    assert work == out
    write(work, FILES)
    assert publish_output(work, str(out)) == str(out)
    assert read(out) == FILES


def test_local_output_is_moved_but_never_overwrites(tmp_path):
    write(tmp_path / "work", FILES)
    publish_output(tmp_path / "work", tmp_path / "out")
    assert read(tmp_path / "out") == FILES and not (tmp_path / "work").exists()
    write(tmp_path / "work2", FILES)
    with pytest.raises(StorageError, match="not an empty folder"):
        publish_output(tmp_path / "work2", tmp_path / "out")
    assert read(tmp_path / "work2") == FILES
    with pytest.raises(StorageError, match="Nothing to publish"):
        publish_output(tmp_path / "missing", tmp_path / "out3")


def test_gcs_publish_then_resolve(bucket, gcs_config, tmp_path):
    uri = f"gs://{bucket}/runs/convert"
    work = staging_dir(uri)
    assert work.is_relative_to(tmp_path / "cache" / "staging") and not any(work.iterdir())
    write(work, FILES)
    assert publish_output(work, uri, gcs_config) == uri
    assert read(work) == FILES  # uploading leaves the staged files alone
    local = resolve_input(uri, gcs_config)
    assert read(local) == FILES
    assert resolve_input(uri, gcs_config) == local


def test_default_output_uri():
    assert default_output_uri(GCSConfig(), "convert") is None
    cfg = GCSConfig(enabled=True, bucket="my-bucket", prefix="team")
    assert default_output_uri(cfg, "run1/convert") == "gs://my-bucket/team/run1/convert"
