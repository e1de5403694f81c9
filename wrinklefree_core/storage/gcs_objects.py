"""What the GCS store speaks in: its errors, one object's metadata, and a URI checked to be a gs:// folder."""

from __future__ import annotations

from dataclasses import dataclass

from wrinklefree_core.uri import GCSURI, StorageError, parse_uri


class IncompleteUploadError(StorageError):
    """A prefix has objects but no completion marker: its writer did not finish."""


class ArtifactNotFoundError(StorageError):
    """Nothing at all exists under a prefix."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a prefix: path relative to the prefix, size, CRC32C (base64) and generation."""

    path: str
    size: int
    crc32c: str | None
    generation: int | None


def _as_gcs(uri: str | GCSURI) -> GCSURI:
    parsed = uri if isinstance(uri, GCSURI) else parse_uri(uri)
    if not isinstance(parsed, GCSURI):
        raise StorageError(f"{uri!r} is not a gs:// URI; local folders need no GCS client.")
    return parsed


def _as_folder(uri: str | GCSURI, action: str) -> GCSURI:
    parsed = _as_gcs(uri)
    if not parsed.prefix:
        raise StorageError(
            f"Cannot {action} {parsed}: artifact folders need a prefix inside the bucket, "
            f"e.g. gs://{parsed.bucket}/runs/name."
        )
    return parsed
