"""The local cache of downloaded GCS artifacts: layout, atomic publication, lookup.

Layout: <root>/<bucket>/<prefix key>/g<marker generation>-<marker crc32c hex>/ holds one verified copy;
<prefix key>/uri.txt names the URI for people browsing the cache.

Design choices:
- The key is URI + marker generation: every upload writes a new marker, hence a new generation and a
  new folder, so a cached copy is never stale and never needs revalidating beyond reading the marker.
- A copy is assembled in a hidden `.tmp-*` sibling and renamed into place after its files are
  fsynced; a folder that exists under its final name is therefore complete. Two processes racing on
  the same download both verify, and the loser discards its copy.
- Old generations are kept (a running stage may still read them); delete cache folders to reclaim space.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from wrinklefree_core.storage.atomic import fsync_tree
from wrinklefree_core.uri import GCSURI, StorageError

_COPY_RE = re.compile(r"g(\d+)-[0-9a-f]*")


def entry_root(root: Path, uri: GCSURI) -> Path:
    """The folder holding every cached generation of `uri`: a readable prefix head plus a hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.prefix)[:60]
    return root / uri.bucket / f"{slug}-{hashlib.sha256(uri.prefix.encode()).hexdigest()[:12]}"


def copy_name(generation: int | None, crc32c: str | None) -> str:
    """The folder name of one cached generation (the marker's CRC32C guards against a reused generation)."""
    return f"g{generation or 0}-{(crc32c or '').encode().hex()}"


def newest_copy(entry: Path) -> Path | None:
    """The cached copy with the highest marker generation (GCS generations only grow), if any."""
    if not entry.is_dir():
        return None
    copies = [p for p in entry.iterdir() if p.is_dir() and _COPY_RE.fullmatch(p.name)]
    return max(copies, key=lambda p: int(_COPY_RE.fullmatch(p.name).group(1)), default=None)


def publish_copy(entry: Path, final: Path, uri: GCSURI, fill: Callable[[Path], None]) -> Path:
    """Let `fill(tmp)` write and verify the files into a temp folder, then rename it to `final`.

    On any failure the temp folder is removed and nothing appears under `final`.
    """
    tmp = entry / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        # The rename publishes the folder to other readers; its files must survive a power loss first.
        fsync_tree(tmp)
        (entry / "uri.txt").write_text(f"{uri}\n", encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # another process published the same generation first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def copy_out(folder: Path, local_dir: str | os.PathLike) -> Path:
    """Copy a cached folder to `local_dir` (absent or empty) atomically, so the caller may modify it freely."""
    dest = Path(local_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StorageError(f"Refusing to download into {dest}: it exists and is not an empty folder.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(folder, tmp)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
