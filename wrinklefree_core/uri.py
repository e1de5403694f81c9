"""Artifact URIs: a local folder, `file:///abs/path`, or `gs://bucket/prefix`.

Design choices:
- Parsing is strict and happens before any I/O, so a typo (`gs:/bucket`, `s3://...`, an upper-case
  bucket) fails at once with a message that says what is supported, instead of silently becoming a
  local folder named `gs:` or a request to a bucket that cannot exist.
- A GCS URI is normalised to (bucket, prefix) with no leading/trailing slashes; its object names are
  `prefix + "/" + relative path`, so `gs://b/run` never matches objects of `gs://b/run2`.
- Only the scheme is case-insensitive (RFC 3986); bucket names must already be valid GCS names.
- This module imports nothing else from the project: it sits below config, whose gcs section
  validates bucket names and prefixes with it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SUPPORTED = "a local path, file:///absolute/path, or gs://bucket/prefix"

# GCS bucket rules: 3-63 characters per dot-separated part, lower-case letters, digits, '-', '_' and
# '.', starting and ending with a letter or digit; at most 222 characters in all.
_BUCKET_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{1,220})[a-z0-9]$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")


class StorageError(ValueError):
    """An artifact location is malformed, unreachable, incomplete or corrupt; the message says what to do."""


@dataclass(frozen=True)
class LocalURI:
    """A folder (or file) on this machine."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class GCSURI:
    """`gs://bucket/prefix`; `prefix` has no leading or trailing slash and may be empty (bucket root)."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def object_name(self, relative: str) -> str:
        """The object name of `relative` (a POSIX path) inside this prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def child(self, relative: str) -> GCSURI:
        """The URI of `relative` inside this prefix."""
        return GCSURI(self.bucket, validate_prefix(self.object_name(relative)))

    @property
    def list_prefix(self) -> str:
        """The listing prefix that matches objects inside this folder and nothing beside it."""
        return f"{self.prefix}/" if self.prefix else ""


ArtifactURI = LocalURI | GCSURI


def validate_bucket_name(bucket: str) -> str:
    """Return `bucket` if it is a valid GCS bucket name, else raise StorageError saying why."""
    if not _BUCKET_RE.match(bucket) or len(bucket) > 222 or ".." in bucket:
        raise StorageError(
            f"Invalid GCS bucket name {bucket!r}: use 3-63 lower-case letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit."
        )
    if any(not 1 <= len(part) <= 63 for part in bucket.split(".")):
        raise StorageError(f"Invalid GCS bucket name {bucket!r}: each dot-separated part must be 1-63 characters.")
    return bucket


def validate_prefix(prefix: str) -> str:
    """Normalise an object-name prefix (strip slashes) and reject empty, '.' or '..' segments."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    parts = stripped.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageError(
            f"Invalid GCS prefix {prefix!r}: it must not contain empty, '.' or '..' path segments."
        )
    if any(ord(c) < 32 or c == "\x7f" for c in stripped):
        raise StorageError(f"Invalid GCS prefix {prefix!r}: control characters are not allowed in object names.")
    return stripped


def _parse_gs(uri: str, rest: str) -> GCSURI:
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"Malformed GCS URI {uri!r}: no bucket name. Expected gs://bucket/prefix.")
    return GCSURI(validate_bucket_name(bucket), validate_prefix(prefix))


def _parse_file(uri: str, rest: str) -> LocalURI:
    # file:///abs/path has an empty host; file://localhost/abs/path is the only other form meant locally.
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost") or not slash:
        raise StorageError(
            f"Unsupported file URI {uri!r}: only local files are supported, written file:///absolute/path."
        )
    return LocalURI(Path("/" + path))


def parse_uri(uri: str | os.PathLike) -> ArtifactURI:
    """Parse an artifact location into a LocalURI or a GCSURI.

    Accepts a local path (relative or absolute, `~` expanded), `file:///abs/path` and
    `gs://bucket/prefix`. Raises StorageError for an empty string, a malformed `gs:` URI, or any
    other scheme (s3://, http://, ...), naming what is supported.
    """
    if isinstance(uri, os.PathLike):
        return LocalURI(Path(uri).expanduser())
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"Empty artifact location {uri!r}: give {SUPPORTED}.")
    text = uri.strip()
    match = _SCHEME_RE.match(text)
    # A one-letter "scheme" without // is a Windows drive (C:\...), which is a local path.
    if match is None or (match.group(2) is None and len(match.group(1)) == 1):
        return LocalURI(Path(text).expanduser())
    scheme = match.group(1).lower()
    if match.group(2) is None:
        if scheme in ("gs", "file"):
            raise StorageError(f"Malformed URI {uri!r}: write {scheme}://... (two slashes after the scheme).")
        # "name:thing" without // is an ordinary relative file name that happens to contain a colon.
        return LocalURI(Path(text).expanduser())
    rest = text[match.end():]
    if scheme == "gs":
        return _parse_gs(uri, rest)
    if scheme == "file":
        return _parse_file(uri, rest)
    raise StorageError(f"Unsupported URI scheme {scheme!r} in {uri!r}: supported are {SUPPORTED}.")


def format_uri(uri: ArtifactURI) -> str:
    """The canonical string of a parsed URI (`gs://bucket/prefix` or a local path)."""
    return str(uri)


GCS_PREFIX = "gs://"


def is_gcs(uri: str | os.PathLike) -> bool:
    """True when `uri` is written as a gs:// URI: a spelling check that never raises (is_remote validates)."""
    return str(uri).startswith(GCS_PREFIX)


def is_remote(uri: str | os.PathLike | ArtifactURI) -> bool:
    """True for gs:// URIs, False for local paths; raises StorageError for malformed or unsupported URIs."""
    parsed = uri if isinstance(uri, (LocalURI, GCSURI)) else parse_uri(uri)
    return isinstance(parsed, GCSURI)


def relative_posix(path: Path, root: Path) -> str:
    """`path` relative to `root` as a POSIX string: the object-name suffix of a file in an uploaded folder."""
    return PurePosixPath(*path.relative_to(root).parts).as_posix()
