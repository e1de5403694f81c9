"""GCSStore against a real fake-gcs-server: uploads, the completion marker, verified cached downloads, failures.

Every test uses its own bucket and cache folder. Failures are produced the way they happen in
production (an object rewritten after the marker, a writer that stopped before the marker, a server
that is not there), not by mocking the client; only the transient-error test injects one error.
"""

from __future__ import annotations

import json
import re
import logging
import os
import socket
import time
from pathlib import Path

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage._media.requests import upload as media_upload

from tests.storage.conftest import EMULATOR_VAR, make_bucket, start_emulator
from wrinklefree_core.storage.gcs import (
    ArtifactNotFoundError,
    BucketUnreachableError,
    CorruptArtifactError,
    GCSStore,
    IncompleteUploadError,
)
from wrinklefree_core.storage.manifest import MARKER_NAME, Manifest
from wrinklefree_core.uri import StorageError

MiB = 1024 * 1024


def raw_client() -> storage.Client:
    """A plain client on the emulator, for arranging bucket state behind the store's back."""
    return storage.Client(project="test", credentials=AnonymousCredentials())


def make_folder(root: Path, big_bytes: int = 5 * MiB) -> dict[str, bytes]:
    """A checkpoint-like folder: small JSON, a nested file, one file big enough for a chunked upload."""
    files = {
        "config.json": json.dumps({"model_type": "llama", "bitnet": {}}).encode(),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": os.urandom(big_bytes),
        "empty.txt": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime: equal snapshots mean nothing was modified or deleted."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def read_folder(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upload_list_download_round_trip(bucket, gcs_config, tmp_path, monkeypatch):
    files = make_folder(tmp_path / "ckpt")
    chunks: list[int] = []
    real_transmit = media_upload.ResumableUpload.transmit_next_chunk

    def counting_transmit(self, *args, **kwargs):
        chunks.append(self.chunk_size)
        return real_transmit(self, *args, **kwargs)

    monkeypatch.setattr(media_upload.ResumableUpload, "transmit_next_chunk", counting_transmit)
    store = GCSStore(gcs_config)
    uri = f"gs://{bucket}/runs/convert"
    store.upload_folder(tmp_path / "ckpt", uri)

    # Only the 5 MiB file exceeds the 1 MiB chunk: 5 full chunks plus the closing request.
    assert len(chunks) >= 5 and set(chunks) == {MiB}

    listing = {info.path: info for info in store.list_prefix(uri)}
    assert set(listing) == set(files) | {MARKER_NAME}
    assert all(listing[name].size == len(data) for name, data in files.items())
    marker = raw_client().bucket(bucket).blob(f"runs/convert/{MARKER_NAME}").download_as_bytes()
    manifest = Manifest.from_json(marker, uri)
    assert [f.path for f in manifest.files] == sorted(files)
    assert all(f.crc32c == listing[f.path].crc32c for f in manifest.files)

    local = store.download_folder(uri)
    assert local.is_relative_to(tmp_path / "cache" / "gcs" / bucket)
    assert read_folder(local) == files
    assert not any(p.name.startswith(".tmp-") for p in local.parent.iterdir())


def test_upload_does_not_match_sibling_prefix(bucket, gcs_config, tmp_path):
    make_folder(tmp_path / "a", big_bytes=10)
    store = GCSStore(gcs_config)
    store.upload_folder(tmp_path / "a", f"gs://{bucket}/run")
    store.upload_folder(tmp_path / "a", f"gs://{bucket}/run2")
    assert {i.path for i in store.list_prefix(f"gs://{bucket}/run")} == {
        "config.json", "tokenizer/tokenizer.json", "model.safetensors", "empty.txt", MARKER_NAME
    }


def test_second_read_is_served_from_cache_even_with_the_server_down(gcs_config, tmp_path, monkeypatch, caplog):
    own = start_emulator()  # this test stops its server, so it must not be the shared one
    try:
        monkeypatch.setenv(EMULATOR_VAR, own.url)
        monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
        name = make_bucket(own.url)
        files = make_folder(tmp_path / "ckpt", big_bytes=2 * MiB)
        uri = f"gs://{name}/ckpt"
        GCSStore(gcs_config).upload_folder(tmp_path / "ckpt", uri)
        first = GCSStore(gcs_config).download_folder(uri)

        downloads: list[str] = []
        real_download = storage.Blob.download_to_filename

        def counting_download(self, *args, **kwargs):
            downloads.append(self.name)
            return real_download(self, *args, **kwargs)

        monkeypatch.setattr(storage.Blob, "download_to_filename", counting_download)
        assert GCSStore(gcs_config).download_folder(uri) == first
        assert downloads == []  # only the marker was read

        own.stop()
        monkeypatch.setenv(EMULATOR_VAR, own.url)  # the wrapper removed it on stop; keep pointing at the dead port
        with caplog.at_level(logging.WARNING, logger="wrinklefree_core.storage"):
            started = time.monotonic()
            assert GCSStore(gcs_config).download_folder(uri) == first
        assert time.monotonic() - started < 5
        assert "using the copy cached" in caplog.text
        assert read_folder(first) == files
    finally:
        own.stop()


def test_incomplete_upload_is_refused(bucket, gcs_config, tmp_path):
    client = raw_client()
    client.bucket(bucket).blob("half/config.json").upload_from_string(b"{}")  # a writer that died before the marker
    store = GCSStore(gcs_config)
    assert store.exists(f"gs://{bucket}/half") and not store.is_complete(f"gs://{bucket}/half")
    with pytest.raises(IncompleteUploadError) as info:
        store.download_folder(f"gs://{bucket}/half")
    message = str(info.value)
    assert "incomplete upload" in message and "Re-run the stage that writes it" in message
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing was downloaded or cached


def test_empty_prefix_is_not_found(bucket, gcs_config):
    with pytest.raises(ArtifactNotFoundError, match="Nothing at"):
        GCSStore(gcs_config).download_folder(f"gs://{bucket}/never-written")


@pytest.mark.parametrize(("replacement", "fragment"), [(b"short", "size mismatch"), (None, "checksum mismatch")])
def test_object_changed_after_upload_is_detected(bucket, gcs_config, tmp_path, replacement, fragment):
    files = make_folder(tmp_path / "ckpt", big_bytes=1000)
    store = GCSStore(gcs_config)
    uri = f"gs://{bucket}/ckpt"
    store.upload_folder(tmp_path / "ckpt", uri)
    original = files["model.safetensors"]
    data = replacement if replacement is not None else bytes(b ^ 0xFF for b in original)  # same size, other bytes
    raw_client().bucket(bucket).blob("ckpt/model.safetensors").upload_from_string(data)

    with pytest.raises(CorruptArtifactError) as info:
        store.download_folder(uri)
    assert fragment in str(info.value) and "re-run the stage" in str(info.value)
    assert not list((tmp_path / "cache").rglob("model.safetensors"))  # no cached or half-written copy


def test_missing_object_is_detected(bucket, gcs_config, tmp_path):
    make_folder(tmp_path / "ckpt", big_bytes=10)
    store = GCSStore(gcs_config)
    store.upload_folder(tmp_path / "ckpt", f"gs://{bucket}/ckpt")
    raw_client().bucket(bucket).blob("ckpt/config.json").delete()
    with pytest.raises(CorruptArtifactError, match="listed in the marker but missing"):
        store.download_folder(f"gs://{bucket}/ckpt")


def test_server_down_fails_fast_with_a_clear_error_and_keeps_local_files(gcs_config, tmp_path, monkeypatch, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(EMULATOR_VAR, dead)
    monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "ckpt", big_bytes=3 * MiB)
    before = snapshot(tmp_path / "ckpt")
    store = GCSStore(gcs_config)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wrinklefree_core.storage"):
        with pytest.raises(BucketUnreachableError) as info:
            store.upload_folder(tmp_path / "ckpt", "gs://some-bucket/runs/x")
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "'some-bucket'" in message and "after 3 attempts" in message and dead in message
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == gcs_config.max_retries
    assert snapshot(tmp_path / "ckpt") == before

    with pytest.raises(BucketUnreachableError, match="some-bucket"):
        store.download_folder("gs://some-bucket/runs/x")


def test_transient_error_is_retried(bucket, gcs_config, tmp_path, monkeypatch):
    files = make_folder(tmp_path / "ckpt", big_bytes=2 * MiB)
    real_upload = storage.Blob.upload_from_file
    failures = []

    def flaky_upload(self, *args, **kwargs):
        if not failures:
            failures.append(self.name)
            raise api_exceptions.ServiceUnavailable("injected 503")
        return real_upload(self, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "upload_from_file", flaky_upload)
    store = GCSStore(gcs_config)
    store.upload_folder(tmp_path / "ckpt", f"gs://{bucket}/ckpt")
    assert len(failures) == 1
    assert read_folder(store.download_folder(f"gs://{bucket}/ckpt")) == files


def _second_version(root: Path) -> dict[str, bytes]:
    """v1's layout with two files changed (the weights and the config) and two the same."""
    files = make_folder(root, big_bytes=200)
    (root / "config.json").write_bytes(b'{"model_type": "llama", "version": 2}')
    return {**files, "config.json": b'{"model_type": "llama", "version": 2}'}


def _object_names(bucket: str) -> list[str]:
    return sorted(b.name for b in raw_client().list_blobs(bucket))


def test_failed_replacement_leaves_the_old_artifact_complete(bucket, gcs_config, tmp_path, monkeypatch):
    v1 = make_folder(tmp_path / "v1", big_bytes=100)
    v2 = _second_version(tmp_path / "v2")
    store = GCSStore(gcs_config)
    uri = f"gs://{bucket}/ckpt"
    store.upload_folder(tmp_path / "v1", uri)
    v1_objects = _object_names(bucket)
    real_upload = storage.Blob.upload_from_file
    calls = []

    def forbidden_after_first(self, *args, **kwargs):
        calls.append(self.name)
        if len(calls) > 1:
            raise api_exceptions.Forbidden("injected 403")
        return real_upload(self, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "upload_from_file", forbidden_after_first)
    with pytest.raises(StorageError, match="Access denied"):
        store.upload_folder(tmp_path / "v2", uri)
    assert len(calls) == 2  # a permanent error is not retried; only the two changed files were tried
    assert all(name.startswith("ckpt/.upload-staging/") for name in calls)
    # v1 is still whole: its marker, its objects, its bytes (the one staged v2 file sits beside it, unread).
    assert read_folder(store.download_folder(uri)) == v1
    assert [n for n in _object_names(bucket) if ".upload-staging" not in n] == v1_objects

    # The retry sends only the file that did not arrive, then swaps inside the bucket.
    calls.clear()
    monkeypatch.setattr(storage.Blob, "upload_from_file", lambda self, *a, **k: (calls.append(self.name), real_upload(self, *a, **k))[1])
    store.upload_folder(tmp_path / "v2", uri)
    (resent,) = [c for c in calls if not c.endswith(MARKER_NAME)]
    assert resent.startswith("ckpt/.upload-staging/") and resent.endswith("/model.safetensors"), calls
    assert read_folder(store.download_folder(uri)) == v2
    assert not any(".upload-staging" in n for n in _object_names(bucket)), _object_names(bucket)


def test_a_replacement_that_fails_while_swapping_is_incomplete_and_a_retry_finishes_it(bucket, gcs_config, tmp_path, monkeypatch):
    make_folder(tmp_path / "v1", big_bytes=100)
    v2 = _second_version(tmp_path / "v2")
    store = GCSStore(gcs_config)
    uri = f"gs://{bucket}/ckpt"
    store.upload_folder(tmp_path / "v1", uri)
    real_rewrite = storage.Blob.rewrite

    def forbidden_rewrite(self, *args, **kwargs):
        raise api_exceptions.Forbidden("injected 403")

    monkeypatch.setattr(storage.Blob, "rewrite", forbidden_rewrite)
    with pytest.raises(StorageError, match="Access denied"):
        store.upload_folder(tmp_path / "v2", uri)
    # The old marker went before the first copy: no reader pairs v1's marker with a v2 file.
    with pytest.raises(IncompleteUploadError):
        store.download_folder(uri)

    monkeypatch.setattr(storage.Blob, "rewrite", real_rewrite)
    sent = []
    real_upload = storage.Blob.upload_from_file
    monkeypatch.setattr(storage.Blob, "upload_from_file", lambda self, *a, **k: (sent.append(self.name), real_upload(self, *a, **k))[1])
    store.upload_folder(tmp_path / "v2", uri, skip_identical=True)
    assert [n for n in sent if not n.endswith(MARKER_NAME)] == []  # every byte was already staged
    assert read_folder(store.download_folder(uri)) == v2


def test_rewrite_gets_a_new_cache_entry(bucket, gcs_config, tmp_path):
    v1 = make_folder(tmp_path / "v1", big_bytes=100)
    v2 = make_folder(tmp_path / "v2", big_bytes=300)
    store = GCSStore(gcs_config)
    uri = f"gs://{bucket}/ckpt"
    store.upload_folder(tmp_path / "v1", uri)
    first = store.download_folder(uri)
    store.upload_folder(tmp_path / "v2", uri)
    second = store.download_folder(uri)
    assert first != second
    assert read_folder(first) == v1 and read_folder(second) == v2


def test_download_into_a_given_folder(bucket, gcs_config, tmp_path):
    files = make_folder(tmp_path / "ckpt", big_bytes=100)
    store = GCSStore(gcs_config)
    store.upload_folder(tmp_path / "ckpt", f"gs://{bucket}/ckpt")
    out = store.download_folder(f"gs://{bucket}/ckpt", tmp_path / "out")
    assert out == tmp_path / "out" and read_folder(out) == files
    with pytest.raises(StorageError, match="not an empty folder"):
        store.download_folder(f"gs://{bucket}/ckpt", tmp_path / "out")


def test_exists_and_missing_bucket(bucket, gcs_config, tmp_path):
    make_folder(tmp_path / "ckpt", big_bytes=10)
    store = GCSStore(gcs_config)
    store.upload_folder(tmp_path / "ckpt", f"gs://{bucket}/ckpt")
    assert store.exists(f"gs://{bucket}/ckpt")
    assert store.exists(f"gs://{bucket}/ckpt/config.json")
    assert store.exists(f"gs://{bucket}")
    assert not store.exists(f"gs://{bucket}/other")
    assert store.is_complete(f"gs://{bucket}/ckpt")
    with pytest.raises(StorageError, match="does not exist"):
        store.exists("gs://no-such-bucket-here/x")
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        store.upload_folder(tmp_path / "ckpt", "gs://no-such-bucket-here/x")


def test_upload_input_errors(bucket, gcs_config, tmp_path):
    store = GCSStore(gcs_config)
    with pytest.raises(StorageError, match="not a folder"):
        store.upload_folder(tmp_path / "missing", f"gs://{bucket}/x")
    (tmp_path / "has_marker").mkdir()
    (tmp_path / "has_marker" / MARKER_NAME).write_text("x")
    with pytest.raises(StorageError, match="reserved"):
        store.upload_folder(tmp_path / "has_marker", f"gs://{bucket}/x")
    with pytest.raises(StorageError, match="need a prefix"):
        store.upload_folder(tmp_path / "has_marker", f"gs://{bucket}")
    with pytest.raises(StorageError, match="not a gs:// URI"):
        store.list_prefix(str(tmp_path))


@pytest.mark.parametrize("key_file_content", [None, '{"type": "service_account", "private_key": "SECRET-KEY-123"'])
def test_bad_credentials_are_reported_without_their_content(tmp_path, monkeypatch, key_file_content):
    monkeypatch.delenv(EMULATOR_VAR, raising=False)
    key = tmp_path / "key.json"
    if key_file_content is not None:
        key.write_text(key_file_content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(StorageError) as info:
        GCSStore().exists("gs://some-bucket/x")
    message = str(info.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and str(key) in message
    assert "SECRET-KEY-123" not in message


def test_bytes_are_verified_after_download_and_no_partial_copy_remains(bucket, gcs_config, tmp_path, monkeypatch):
    make_folder(tmp_path / "ckpt", big_bytes=1000)
    store = GCSStore(gcs_config)
    uri = f"gs://{bucket}/ckpt"
    store.upload_folder(tmp_path / "ckpt", uri)
    raw_client().bucket(bucket).blob("ckpt/model.safetensors").upload_from_string(b"x" * 999)
    # Skip the metadata pre-check, as if the object changed between listing and downloading.
    monkeypatch.setattr(GCSStore, "_check_objects", lambda self, source, manifest: None)
    with pytest.raises(CorruptArtifactError, match="size mismatch.*after download"):
        store.download_folder(uri)
    leftovers = [p.name for p in (tmp_path / "cache" / "gcs").rglob("*") if p.is_dir()]
    assert not [name for name in leftovers if name.startswith(".tmp-") or re.fullmatch(r"g\d+-.*", name)]


def test_staged_copies_seen_through_a_mount_are_not_part_of_the_artifact(tmp_path):
    from wrinklefree_core.storage.manifest import STAGING_DIR, scan_folder

    files = make_folder(tmp_path / "mounted", big_bytes=10)
    (tmp_path / "mounted" / STAGING_DIR / "0a1b2c3d-10").mkdir(parents=True)
    (tmp_path / "mounted" / STAGING_DIR / "0a1b2c3d-10" / "model.safetensors").write_bytes(b"x" * 10)
    assert sorted(e.path for e in scan_folder(tmp_path / "mounted").files) == sorted(files)
