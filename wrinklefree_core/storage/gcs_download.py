"""Downloads of sealed artifact folders, checked against their marker twice, cached, and served offline from the cache.

GCSStore (gcs.py) inherits these methods; they use its client, config and retrying `_call`.
Checked twice: the bucket's metadata against the manifest before any byte moves, each file's size
and CRC32C after. Copies land in the cache (cache.py) keyed by URI + marker generation; when the
bucket cannot be reached, the newest cached copy of that URI is used with a warning.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import NoReturn

from google.cloud import storage

from wrinklefree_core.paths import cache_dir
from wrinklefree_core.storage import cache
from wrinklefree_core.storage.gcs_objects import ArtifactNotFoundError, IncompleteUploadError, _as_folder
from wrinklefree_core.storage.manifest import MARKER_NAME, CorruptArtifactError, FileEntry, Manifest, verify_file
from wrinklefree_core.storage.retry import BucketUnreachableError
from wrinklefree_core.uri import GCSURI

log = logging.getLogger("wrinklefree_core.storage.gcs")


class GCSDownloads:
    """The download half of GCSStore (module docstring)."""

    def download_folder(
        self,
        gs_uri: str | GCSURI,
        local_dir: str | os.PathLike | None = None,
        *,
        cache_root: str | os.PathLike | None = None,
    ) -> Path:
        """Return a verified local copy of the artifact folder at `gs_uri`.

        The copy lives under `cache_root` (default cache_dir()/gcs), keyed by URI and marker
        generation: a second call for an unchanged artifact downloads nothing. With `local_dir`, the
        cached copy is also copied there (which must be absent or empty) and that path is returned.
        Raises IncompleteUploadError without a marker, ArtifactNotFoundError for an empty prefix,
        CorruptArtifactError when sizes/checksums disagree, BucketUnreachableError when GCS cannot be
        reached and nothing is cached.
        """
        source = _as_folder(gs_uri, "download")
        entry = cache.entry_root(Path(cache_root) if cache_root is not None else cache_dir() / "gcs", source)
        try:
            generation, crc32c, manifest = self._read_marker(source)
        except BucketUnreachableError:
            cached = cache.newest_copy(entry)
            if cached is None:
                raise
            log.warning("could not reach GCS for %s; using the copy cached at %s", source, cached)
            return _deliver(cached, local_dir)
        folder = entry / cache.copy_name(generation, crc32c)
        if folder.is_dir():
            log.info("%s is cached at %s", source, folder)
            return _deliver(folder, local_dir)
        self._check_objects(source, manifest)
        started = time.monotonic()
        cache.publish_copy(entry, folder, source, lambda tmp: self._download_files(source, manifest, tmp))
        log.info(
            "downloaded %s (%d files, %.1f MiB) in %.1fs",
            source, len(manifest.files), manifest.total_bytes / 2**20, time.monotonic() - started,
        )
        return _deliver(folder, local_dir)

    def _read_marker(self, source: GCSURI) -> tuple[int | None, str | None, Manifest]:
        bucket = self.client.bucket(source.bucket)
        timeout = self.config.timeout_s
        what = f"read the completion marker of {source}"
        name = source.object_name(MARKER_NAME)
        blob = self._call(lambda: bucket.get_blob(name, retry=None, timeout=timeout), bucket=source.bucket, what=what)
        if blob is None:
            self._raise_missing_marker(source)
        # The blob carries its generation, so this reads exactly the marker version just looked up.
        data = self._call(
            lambda: blob.download_as_bytes(checksum=None, retry=None, timeout=timeout), bucket=source.bucket, what=what
        )
        return blob.generation, blob.crc32c, Manifest.from_json(data, str(source))

    def _raise_missing_marker(self, source: GCSURI) -> NoReturn:
        if not self._list(source, max_results=1):
            raise ArtifactNotFoundError(
                f"Nothing at {source}: no objects under this prefix. Check the URI, or run the stage that "
                "writes it first."
            )
        raise IncompleteUploadError(
            f"{source} is an incomplete upload: it has objects but no {MARKER_NAME} marker, so its writer did "
            "not finish (or is still running). Re-run the stage that writes it."
        )

    def _check_objects(self, source: GCSURI, manifest: Manifest) -> None:
        """Compare bucket metadata with the manifest before downloading anything."""
        objects = {info.path: info for info in self.list_prefix(source)}
        fix = f"The object changed or was deleted after the upload completed; re-run the stage that writes {source}."
        for entry in manifest.files:
            info = objects.get(entry.path)
            where = source.child(entry.path)
            if info is None:
                raise CorruptArtifactError(f"{where} is listed in the marker but missing. {fix}")
            if info.size != entry.size:
                raise CorruptArtifactError(
                    f"{where}: size mismatch, the marker says {entry.size} bytes, the bucket has {info.size}. {fix}"
                )
            if info.crc32c is not None and info.crc32c != entry.crc32c:
                raise CorruptArtifactError(
                    f"{where}: checksum mismatch, the marker says crc32c {entry.crc32c}, "
                    f"the bucket has {info.crc32c}. {fix}"
                )

    def _download_files(self, source: GCSURI, manifest: Manifest, tmp: Path) -> None:
        bucket = self.client.bucket(source.bucket)
        for entry in manifest.files:
            self._call(
                lambda entry=entry: self._download_file(bucket, source, entry, tmp),
                bucket=source.bucket,
                what=f"download {source.child(entry.path)}",
            )

    def _download_file(self, bucket: storage.Bucket, source: GCSURI, entry: FileEntry, tmp: Path) -> None:
        dest = tmp / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        bucket.blob(source.object_name(entry.path)).download_to_filename(
            str(dest), checksum=None, retry=None, timeout=self.config.timeout_s
        )
        problem = verify_file(dest, entry)
        if problem is not None:
            raise CorruptArtifactError(
                f"{source.child(entry.path)}: {problem} after download. Re-run the stage that writes {source}."
            )


def _deliver(folder: Path, local_dir: str | os.PathLike | None) -> Path:
    return folder if local_dir is None else cache.copy_out(folder, local_dir)
