"""The completion marker of an uploaded artifact folder: `<prefix>/_COMPLETE`, a JSON manifest.

Design choices:
- The marker is written last and removed first when a prefix is rewritten, so its presence means
  "every file it lists was uploaded and verified"; readers consume only the files it lists and
  ignore anything else under the prefix (leftovers of an older upload, stray objects).
- Each file is recorded with its size and CRC32C (base64 of the big-endian value, the encoding GCS
  itself reports), so a reader can compare against bucket metadata before downloading and against
  the bytes after. CRC32C rather than MD5: GCS has a CRC32C for every object, MD5 not for composites.
- Paths in a manifest are checked on parse (relative, no '..'), so a damaged or hostile marker cannot
  make a download write outside its target folder.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import google_crc32c

from wrinklefree_core.uri import StorageError, relative_posix

MARKER_NAME = "_COMPLETE"
FORMAT = "wrinklefree-artifact/1"
_READ_BLOCK = 1 << 20


class CorruptArtifactError(StorageError):
    """An artifact's bytes or marker do not match what was uploaded."""


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact folder: POSIX path relative to the folder, size in bytes, CRC32C (base64)."""

    path: str
    size: int
    crc32c: str


@dataclass(frozen=True)
class Manifest:
    """The files of an artifact folder, sorted by path."""

    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        """The marker's content."""
        body = {"format": FORMAT, "files": [vars(f) for f in self.files], "total_bytes": self.total_bytes}
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse a marker read from `where` (used in messages); CorruptArtifactError if it is not one."""
        fix = f"Re-run the stage that writes {where}."
        try:
            body = json.loads(data.decode("utf-8"))
            if body.get("format") != FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {FORMAT!r}")
            files = tuple(
                FileEntry(path=_safe_path(f["path"]), size=int(f["size"]), crc32c=str(f["crc32c"]))
                for f in body["files"]
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptArtifactError(f"The completion marker of {where} is unreadable ({exc}). {fix}") from exc
        return cls(files=files)


def _safe_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in ("..", ".") for p in parts) or path == MARKER_NAME:
        raise ValueError(f"invalid file path {path!r} in the manifest")
    return path


def crc32c_of_file(path: Path) -> str:
    """CRC32C of a file's bytes, base64 of the big-endian value (as GCS reports it)."""
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode("ascii")


STAGING_DIR = ".upload-staging"  # under a prefix being replaced: new files wait here until all have arrived (gcs.py)


def scan_folder(root: Path, ignore_marker: bool = False) -> Manifest:
    """Build the manifest of every regular file under `root` (symlinks followed), without modifying anything.

    The STAGING_DIR folder is left out. Raises StorageError when `root` is not a folder or holds a top-level file named like the marker
    (unless `ignore_marker`: then that file is left out of the manifest).
    """
    if not root.is_dir():
        raise StorageError(f"Cannot upload {root}: it is not a folder (missing, or a file).")
    marker = root / MARKER_NAME
    if marker.exists() and not ignore_marker:
        raise StorageError(
            f"{root} contains a file named {MARKER_NAME}, which is reserved for the completion marker; rename it."
        )
    staging = root / STAGING_DIR  # a replacement's staged copies, seen through a mount of the bucket
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p != marker and staging not in p.parents)
    return Manifest(
        files=tuple(
            FileEntry(path=relative_posix(p, root), size=p.stat().st_size, crc32c=crc32c_of_file(p)) for p in paths
        )
    )


def verify_file(path: Path, entry: FileEntry) -> str | None:
    """None when `path` has the size and CRC32C of `entry`, else a description of the mismatch."""
    size = os.path.getsize(path)
    if size != entry.size:
        return f"size mismatch: the marker says {entry.size} bytes, got {size}"
    crc = crc32c_of_file(path)
    if crc != entry.crc32c:
        return f"checksum mismatch: the marker says crc32c {entry.crc32c}, got {crc}"
    return None
