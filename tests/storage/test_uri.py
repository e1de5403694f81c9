"""URI parsing: what is accepted, how it is normalised, and that every mistake is a clear StorageError."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.uri import GCSURI, LocalURI, StorageError, format_uri, is_remote, parse_uri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gs://my-bucket/runs/a", GCSURI("my-bucket", "runs/a")),
        ("gs://my-bucket/runs/a/", GCSURI("my-bucket", "runs/a")),
        ("GS://my-bucket/x", GCSURI("my-bucket", "x")),
        ("gs://my.bucket_1", GCSURI("my.bucket_1", "")),
        ("gs://my-bucket/", GCSURI("my-bucket", "")),
        ("file:///tmp/ckpt", LocalURI(Path("/tmp/ckpt"))),
        ("file://localhost/tmp/ckpt", LocalURI(Path("/tmp/ckpt"))),
        ("outputs/run1", LocalURI(Path("outputs/run1"))),
        ("/abs/run1", LocalURI(Path("/abs/run1"))),
        ("run:1", LocalURI(Path("run:1"))),
    ],
)
def test_parse_valid(text, expected):
    assert parse_uri(text) == expected


def test_pathlike_and_home_expansion():
    assert parse_uri(Path("a/b")) == LocalURI(Path("a/b"))
    assert parse_uri("~/x") == LocalURI(Path.home() / "x")


def test_format_round_trip():
    for text in ["gs://my-bucket/runs/a", "gs://my-bucket", "/abs/run1"]:
        assert format_uri(parse_uri(text)) == text
    assert str(GCSURI("my-bucket", "runs").child("ckpt/config.json")) == "gs://my-bucket/runs/ckpt/config.json"
    assert GCSURI("my-bucket", "runs").list_prefix == "runs/"
    assert GCSURI("my-bucket").object_name("x") == "x"


def test_is_remote():
    assert is_remote("gs://my-bucket/x")
    assert not is_remote("outputs/x")
    assert not is_remote(Path("/x"))
    assert not is_remote("file:///x")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("s3://bucket/x", "Unsupported URI scheme 's3'"),
        ("http://host/x", "Unsupported URI scheme 'http'"),
        ("gs:/my-bucket/x", "two slashes"),
        ("gs:my-bucket", "two slashes"),
        ("gs://", "no bucket name"),
        ("gs:///x", "no bucket name"),
        ("gs://My-Bucket/x", "Invalid GCS bucket name"),
        ("gs://ab/x", "Invalid GCS bucket name"),
        ("gs://-bucket/x", "Invalid GCS bucket name"),
        ("gs://my..bucket/x", "Invalid GCS bucket name"),
        ("gs://my-bucket/a//b", "empty, '.' or '..'"),
        ("gs://my-bucket/a/../b", "empty, '.' or '..'"),
        ("file://otherhost/x", "only local files"),
        ("", "Empty artifact location"),
        ("   ", "Empty artifact location"),
    ],
)
def test_parse_errors(text, fragment):
    with pytest.raises(StorageError) as info:
        parse_uri(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unsupported_scheme_says_what_is_supported():
    with pytest.raises(StorageError) as info:
        is_remote("s3://bucket/x")
    assert "gs://bucket/prefix" in str(info.value) and "file:///" in str(info.value)


def test_gcs_config_validation():
    cfg = GCSConfig(enabled=True, bucket="my-bucket", prefix="/team/runs/")
    assert cfg.prefix == "team/runs"
    assert GCSConfig(chunk_size_mb=3).chunk_size_bytes % (256 * 1024) == 0
    with pytest.raises(ValueError, match="needs gcs.bucket"):
        GCSConfig(enabled=True)
    with pytest.raises(ValueError, match="Invalid GCS bucket name"):
        GCSConfig(bucket="Not_Valid!")
    with pytest.raises(ValueError):
        GCSConfig(chunk_size_mb=0)
    with pytest.raises(ValueError):
        GCSConfig(surprise=1)
    for name, field in GCSConfig.model_fields.items():
        assert field.description, f"GCSConfig.{name} has no description"
        assert not field.is_required(), f"GCSConfig.{name} has no default"
