"""GCSStore: a small wrapper over google-cloud-storage that moves whole artifact folders safely.

Design choices:
- Credentials come from the environment only: Application Default Credentials or
  GOOGLE_APPLICATION_CREDENTIALS; with STORAGE_EMULATOR_HOST set, anonymous credentials and the
  emulator. Nothing here logs credentials, tokens or request headers.
- Every request goes through retry.call_with_retries (bounded attempts, backoff, clear errors). A
  transient error during a file's upload or download restarts that file only.
- Files larger than `chunk_size_mb` go through a resumable session in chunks of that size (the client
  would otherwise send anything up to 8 MiB in one request); smaller files take one request. Every
  uploaded object is checked against the local size and CRC32C the server reports back.
- Completion: the `_COMPLETE` marker is written last (manifest.py), so a reader never consumes a
  half-uploaded folder. Replacing a complete artifact first uploads the changed files beside it
  (STAGING_DIR); only then is the old marker removed, the files copied into place inside the bucket
  and the new marker written. A transfer that fails leaves the old artifact complete, and the window
  in which the prefix reads "incomplete" is a few server-side copies long, not the upload.
  Uploads only read local files: a failed upload never deletes or modifies them. With
  `skip_identical`, objects already holding a file's size and CRC32C are not sent again (a second
  try, or a folder written through a mount of the bucket that only needs sealing).
- Deleting a prefix removes its marker first, for the same reason.
- Downloads (gcs_download.py) are checked against the manifest twice (bucket metadata before, bytes
  after), land in the cache (cache.py) keyed by URI + marker generation, and are reused without
  downloading again. If the bucket cannot be reached, the newest cached copy is used with a warning.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.storage.gcs_download import GCSDownloads
from wrinklefree_core.storage.gcs_objects import ArtifactNotFoundError, IncompleteUploadError, ObjectInfo, _as_folder, _as_gcs
from wrinklefree_core.storage.manifest import (
    MARKER_NAME,
    STAGING_DIR,
    CorruptArtifactError,
    FileEntry,
    scan_folder,
)
from wrinklefree_core.storage.retry import BucketUnreachableError, UploadMismatch, call_with_retries
from wrinklefree_core.uri import GCSURI, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "ArtifactNotFoundError",
    "BucketUnreachableError",
    "CorruptArtifactError",
    "GCSStore",
    "IncompleteUploadError",
    "ObjectInfo",
    "download_folder",
    "exists",
    "list_prefix",
    "upload_folder",
]


class GCSStore(GCSDownloads):
    """Folder-level upload, download, listing and existence checks on GCS, with bounded retries.

    `config` supplies the project, chunk size, retry count, backoff and timeouts; `client` may be
    passed to reuse an existing google.cloud.storage.Client (otherwise one is made on first use).
    """

    def __init__(self, config: GCSConfig | None = None, client: storage.Client | None = None) -> None:
        self.config = config or GCSConfig()
        self._client = client

    @property
    def client(self) -> storage.Client:
        """The google-cloud-storage client, created from the environment on first use."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> storage.Client:
        try:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                # The emulator accepts no real credentials; never look for (or send) any.
                project = self.config.project or "wrinklefree-emulator"
                return storage.Client(project=project, credentials=AnonymousCredentials())
            return storage.Client(project=self.config.project)
        except auth_exceptions.DefaultCredentialsError as exc:
            # The message names the missing file or lookup that failed; it never holds key material.
            raise StorageError(
                f"No usable Google Cloud credentials ({exc}). Set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service-account key file or run `gcloud auth application-default login` (on GCP VMs the "
                "attached service account is used); for a local emulator set STORAGE_EMULATOR_HOST."
            ) from exc

    def _call(self, fn: Callable[[], T], *, bucket: str, what: str) -> T:
        return call_with_retries(
            fn, bucket=bucket, what=what, max_retries=self.config.max_retries, backoff_s=self.config.retry_backoff_s
        )

    def _list(self, uri: GCSURI, max_results: int | None = None) -> list[storage.Blob]:
        # list() inside the retried call: the iterator fetches its pages lazily.
        return self._call(
            lambda: list(
                self.client.list_blobs(
                    uri.bucket, prefix=uri.list_prefix, max_results=max_results, retry=None,
                    timeout=self.config.timeout_s,
                )
            ),
            bucket=uri.bucket,
            what=f"list {uri}",
        )

    # ------------------------------------------------------------------------------------- queries

    def list_prefix(self, gs_uri: str | GCSURI) -> list[ObjectInfo]:
        """Every object under `gs_uri` (as a folder), with paths relative to it, sorted by path."""
        uri = _as_gcs(gs_uri)
        start = len(uri.list_prefix)
        infos = [ObjectInfo(b.name[start:], int(b.size or 0), b.crc32c, b.generation) for b in self._list(uri)]
        return sorted(infos, key=lambda info: info.path)

    def exists(self, gs_uri: str | GCSURI) -> bool:
        """True when `gs_uri` names an object or a non-empty prefix (a bare gs://bucket: the bucket exists).

        A missing bucket under a prefix raises StorageError rather than returning False, so a
        misspelt bucket is not mistaken for "not written yet".
        """
        uri = _as_gcs(gs_uri)
        bucket = self.client.bucket(uri.bucket)
        timeout = self.config.timeout_s
        what = f"check {uri}"
        if not uri.prefix:
            return self._call(lambda: bucket.exists(retry=None, timeout=timeout), bucket=uri.bucket, what=what)
        blob = bucket.blob(uri.prefix)
        if self._call(lambda: blob.exists(retry=None, timeout=timeout), bucket=uri.bucket, what=what):
            return True
        return bool(self._list(uri, max_results=1))

    def is_complete(self, gs_uri: str | GCSURI) -> bool:
        """True when the artifact folder at `gs_uri` has its completion marker."""
        uri = _as_folder(gs_uri, "check")
        marker = self.client.bucket(uri.bucket).blob(uri.object_name(MARKER_NAME))
        return self._call(
            lambda: marker.exists(retry=None, timeout=self.config.timeout_s), bucket=uri.bucket, what=f"check {uri}"
        )

    # -------------------------------------------------------------------------------------- upload

    def upload_folder(
        self, local_dir: str | os.PathLike, gs_uri: str | GCSURI, *, skip_identical: bool = False
    ) -> GCSURI:
        """Upload every file under `local_dir` to `gs_uri`, then write the completion marker last.

        A prefix that already holds a complete artifact is replaced without ever leaving it broken
        while bytes travel: the changed files are uploaded beside it (under STAGING_DIR), and only
        when all of them are in the bucket is the old marker removed, the files copied into place
        inside the bucket and the new marker written. A failed transfer leaves the old artifact
        complete; a retry finds the staged files and does not send them again. Files the bucket
        already holds with the same size and CRC32C are never rewritten. Objects under the prefix that
        the new folder lacks are left in place and ignored by readers. Local files are only read.
        `skip_identical`: also skip identical objects when the prefix has no marker (a re-run after a
        failed first upload, or a folder written through a mount of the bucket; a top-level marker
        file seen through such a mount is a stale copy and is left out).
        Raises StorageError (BucketUnreachableError once retries run out). Returns the target URI.
        """
        target = _as_folder(gs_uri, "upload to")
        root = Path(local_dir)
        manifest = scan_folder(root, ignore_marker=skip_identical)
        bucket = self.client.bucket(target.bucket)
        marker = bucket.blob(target.object_name(MARKER_NAME))
        timeout = self.config.timeout_s
        replacing = self.is_complete(target)
        have = {i.path: i for i in self.list_prefix(target)} if skip_identical or replacing else {}
        changed = [e for e in manifest.files if not _holds(have.get(e.path), e)]
        started = time.monotonic()
        # A file staged by an earlier try that failed while swapping is copied, not sent again.
        staged = [e for e in changed if _holds(have.get(_staged_name(e)), e)]
        if replacing:
            for entry in changed:  # the old artifact stays complete and readable meanwhile
                if entry not in staged:
                    self._send(bucket, root, target, entry, _staged_name(entry))
            staged = changed
            if changed:
                self._call(lambda: _delete_if_there(marker, timeout), bucket=target.bucket, what=f"remove the old completion marker of {target}")
        for entry in changed:
            if entry in staged:
                self._call(
                    lambda entry=entry: _copy_within(bucket, target, _staged_name(entry), entry, timeout),
                    bucket=target.bucket,
                    what=f"copy the new {entry.path} into place in {target}",
                )
            else:
                self._send(bucket, root, target, entry, entry.path)
        self._call(
            lambda: marker.upload_from_string(
                manifest.to_json(), content_type="application/json", retry=None, timeout=timeout
            ),
            bucket=target.bucket,
            what=f"write the completion marker of {target}",
        )
        self._drop_staging(bucket, target)
        log.info(
            "uploaded %d of %d files (%.1f MiB in all) to %s in %.1fs",
            len(changed), len(manifest.files), manifest.total_bytes / 2**20, target, time.monotonic() - started,
        )
        return target

    def _send(self, bucket: storage.Bucket, root: Path, target: GCSURI, entry: FileEntry, name: str) -> None:
        self._call(
            lambda: self._upload_file(bucket, root, target.object_name(name), entry),
            bucket=target.bucket,
            what=f"upload {entry.path} to {target}",
        )

    def _drop_staging(self, bucket: storage.Bucket, target: GCSURI) -> None:
        """Delete the staged copies once the marker is written; one left behind is only clutter, so failures are logged."""
        staging = target.child(STAGING_DIR)
        try:
            for info in self.list_prefix(staging):
                _delete_if_there(bucket.blob(staging.object_name(info.path)), self.config.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the upload itself succeeded
            log.warning("could not delete the staged copies under %s: %s", staging, exc)

    def _upload_file(self, bucket: storage.Bucket, root: Path, object_name: str, entry: FileEntry) -> None:
        chunk = self.config.chunk_size_bytes
        resumable = entry.size > chunk
        blob = bucket.blob(object_name, chunk_size=chunk if resumable else None)
        with open(root / entry.path, "rb") as f:
            # size=None makes the client open a resumable session and send chunk-sized pieces even for
            # files under its own 8 MiB single-request threshold.
            blob.upload_from_file(
                f,
                size=None if resumable else entry.size,
                content_type="application/octet-stream",
                checksum=None,  # verified below against the manifest, one rule for both upload kinds
                retry=None,
                timeout=self.config.timeout_s,
            )
        if blob.size != entry.size or blob.crc32c != entry.crc32c:
            raise UploadMismatch(
                f"{entry.path} arrived as {blob.size} bytes (crc32c {blob.crc32c}) but the local file was "
                f"{entry.size} bytes (crc32c {entry.crc32c})"
            )

    def delete_prefix(self, gs_uri: str | GCSURI) -> int:
        """Delete every object of the artifact folder at `gs_uri`, its marker first; return how many.

        Removing the marker first means a reader racing the deletion sees an incomplete upload, never
        a complete folder with files missing.
        """
        target = _as_folder(gs_uri, "delete")
        bucket = self.client.bucket(target.bucket)
        names = sorted((info.path for info in self.list_prefix(target)), key=lambda p: p != MARKER_NAME)

        def delete(name: str) -> None:
            try:
                bucket.blob(target.object_name(name)).delete(retry=None, timeout=self.config.timeout_s)
            except api_exceptions.NotFound:
                pass  # already gone (another cleaner, or a retried request that had succeeded)

        for name in names:
            self._call(lambda name=name: delete(name), bucket=target.bucket, what=f"delete {target.child(name)}")
        return len(names)


def _holds(info: ObjectInfo | None, entry: FileEntry) -> bool:
    """True when the object `info` already has `entry`'s bytes (same size and CRC32C)."""
    return info is not None and info.size == entry.size and info.crc32c == entry.crc32c


def _staged_name(entry: FileEntry) -> str:
    """Where a changed file waits; named by content, so a retry finds what it already sent."""
    return f"{STAGING_DIR}/{base64.b64decode(entry.crc32c).hex()}-{entry.size}/{entry.path}"


def _delete_if_there(blob: storage.Blob, timeout: float) -> None:
    try:
        blob.delete(retry=None, timeout=timeout)
    except api_exceptions.NotFound:
        pass


def _copy_within(bucket: storage.Bucket, target: GCSURI, staged: str, entry: FileEntry, timeout: float) -> None:
    """Server-side copy of a staged object to its real name (no bytes through this machine), checked."""
    destination = bucket.blob(target.object_name(entry.path))
    token, _, _ = destination.rewrite(bucket.blob(target.object_name(staged)), retry=None, timeout=timeout)
    while token is not None:
        token, _, _ = destination.rewrite(bucket.blob(target.object_name(staged)), token=token, retry=None, timeout=timeout)
    if destination.size != entry.size or destination.crc32c != entry.crc32c:
        raise UploadMismatch(f"{entry.path} was copied into place as {destination.size} bytes (crc32c {destination.crc32c}), expected {entry.size} ({entry.crc32c})")


# Module-level shortcuts for one-off calls; stages use artifacts.py, which picks local or GCS.


def upload_folder(local_dir: str | os.PathLike, gs_uri: str, config: GCSConfig | None = None) -> GCSURI:
    """GCSStore(config).upload_folder(local_dir, gs_uri)."""
    return GCSStore(config).upload_folder(local_dir, gs_uri)


def download_folder(gs_uri: str, local_dir: str | os.PathLike | None = None, config: GCSConfig | None = None) -> Path:
    """GCSStore(config).download_folder(gs_uri, local_dir)."""
    return GCSStore(config).download_folder(gs_uri, local_dir)


def exists(gs_uri: str, config: GCSConfig | None = None) -> bool:
    """GCSStore(config).exists(gs_uri)."""
    return GCSStore(config).exists(gs_uri)


def list_prefix(gs_uri: str, config: GCSConfig | None = None) -> list[ObjectInfo]:
    """GCSStore(config).list_prefix(gs_uri)."""
    return GCSStore(config).list_prefix(gs_uri)
