"""Local folders that are mounts of a GCS bucket (a SkyPilot job's /checkpoints), declared in the environment.

    WRINKLEFREE_BUCKET_MOUNTS="/checkpoints=gs://my-bucket"      (several: comma-separated)

Design choices:
- A stage writing through a mount writes plain files; the mount uploads them in the background, in
  no particular order, and never writes the completion marker. Knowing which GCS prefix a local
  folder is lets the stage seal its output through the API afterwards (artifacts/io.py).
- The mapping comes from the environment, not from the config: it is a fact about the machine the
  stage runs on (the job sets it beside the mount), and the same config runs locally without one.
"""

from __future__ import annotations

import os
from pathlib import Path

from wrinklefree_core.uri import GCSURI, StorageError, parse_uri, relative_posix

MOUNTS_ENV = "WRINKLEFREE_BUCKET_MOUNTS"


def bucket_mounts() -> dict[Path, GCSURI]:
    """{absolute mount folder: the gs:// prefix it shows} from WRINKLEFREE_BUCKET_MOUNTS."""
    mounts: dict[Path, GCSURI] = {}
    for item in filter(None, (part.strip() for part in os.environ.get(MOUNTS_ENV, "").split(","))):
        folder, sep, uri = item.partition("=")
        parsed = parse_uri(uri) if sep else None
        if not isinstance(parsed, GCSURI) or not folder:
            raise StorageError(f"{MOUNTS_ENV} entry {item!r} is not of the form /local/folder=gs://bucket[/prefix].")
        mounts[Path(os.path.abspath(folder))] = parsed
    return mounts


def remote_of(path: str | os.PathLike) -> GCSURI | None:
    """The gs:// URI a local path shows through a declared bucket mount, or None outside every mount."""
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    for folder, uri in bucket_mounts().items():
        if absolute == folder:
            return uri
        if absolute.is_relative_to(folder):
            return uri.child(relative_posix(absolute, folder))
    return None
