"""What a stage calls to read its inputs and publish its outputs, whether they are local or on GCS.

A stage works on local folders only:

    ckpt = resolve_input(cfg.checkpoint, cfg.gcs)        # local folder, or a verified cached download
    work = staging_dir(cfg.out)                          # where to write the output (work_dir: kept)
    ... write the output folder into `work` ...
    publish_output(work, cfg.out, cfg.gcs)               # no-op / move for local, upload for gs://

Design choices:
- google-cloud-storage is imported only when a gs:// URI is used, so local runs work without the
  optional `pipeline` dependencies.
- A local input is returned as is, unchecked: the readers (checkpoint loader, exporter) already say
  precisely what is missing and which stage to run.
- Publishing to a local folder never overwrites: the target must be absent or empty (the staging
  folder of a local output is the target itself, so the usual case is a no-op). Moves are atomic on
  one filesystem; across filesystems the copy goes to a hidden sibling first and is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.paths import cache_dir
from wrinklefree_core.uri import GCSURI, LocalURI, StorageError, parse_uri


def _store(config: GCSConfig | None):
    try:
        from wrinklefree_core.storage.gcs import GCSStore
    except ImportError as exc:
        raise StorageError(
            f"gs:// URIs need google-cloud-storage ({exc}). Install it with `pip install 'wrinklefree[pipeline]'`."
        ) from exc
    return GCSStore(config)


def resolve_input(uri: str | os.PathLike, config: GCSConfig | None = None) -> Path:
    """The local folder holding the input artifact at `uri`.

    A local path (or file://) is returned unchanged; a gs:// URI is downloaded (or reused from
    the cache) and verified, see GCSStore.download_folder. Raises StorageError for malformed or
    unsupported URIs and for incomplete, corrupt or unreachable remote artifacts.
    """
    parsed = parse_uri(uri)
    if isinstance(parsed, LocalURI):
        return parsed.path
    return _store(config).download_folder(parsed)


def staging_dir(uri: str | os.PathLike) -> Path:
    """Where a stage should write the output it will publish to `uri`.

    For a local target that is the target itself (publishing is then a no-op); for gs:// a scratch
    folder under cache_dir()/staging, unique per URI and emptied here so a rerun starts clean.
    """
    parsed = parse_uri(uri)
    if isinstance(parsed, LocalURI):
        return parsed.path
    key = hashlib.sha256(str(parsed).encode()).hexdigest()[:16]
    folder = cache_dir() / "staging" / parsed.bucket / key
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def work_dir(uri: str | os.PathLike) -> Path:
    """A local folder for the work behind the gs:// output `uri` that, unlike staging_dir, is kept.

    The same URI always maps to the same folder (cache_dir()/runs/<bucket>/<hash>), so a run that
    keeps resumable state beside its output finds it again when the same command is re-run here.
    """
    parsed = parse_uri(uri)
    if not isinstance(parsed, GCSURI):
        raise StorageError(f"work_dir is for gs:// outputs; {uri} is a local path, write there directly.")
    key = hashlib.sha256(str(parsed).encode()).hexdigest()[:16]
    folder = cache_dir() / "runs" / parsed.bucket / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish_output(local_dir: str | os.PathLike, uri: str | os.PathLike, config: GCSConfig | None = None) -> str:
    """Make the finished folder `local_dir` available at `uri`; return the canonical URI string.

    gs://: upload with a completion marker written last (local files untouched). Local target equal
    to `local_dir`: nothing to do. Other local target: move `local_dir` there; the target must not
    exist or be an empty folder.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageError(f"Nothing to publish: {src} is not a folder.")
    parsed = parse_uri(uri)
    if isinstance(parsed, GCSURI):
        return str(_store(config).upload_folder(src, parsed))
    dest = parsed.path
    if dest.resolve() == src.resolve():
        return str(dest)
    _move_folder(src, dest)
    return str(dest)


def default_output_uri(config: GCSConfig, name: str) -> str | None:
    """gs://bucket/prefix/name when `config.enabled`, else None (the caller picks a local folder)."""
    if not config.enabled:
        return None
    return str(GCSURI(config.bucket or "", config.prefix).child(name))


def _move_folder(src: Path, dest: Path) -> None:
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise StorageError(f"Refusing to publish to {dest}: it exists and is not an empty folder.")
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
        return
    except OSError:
        pass  # another filesystem (EXDEV): copy beside the target, then rename into place
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(src)
