"""Fingerprints that decide whether a finished stage can be reused: config, input artifact, code.

A stage's cache key is sha256 over (key version, package version, stage name, resolved config minus
where it writes and logs, digest of the input artifact, digest of a local source-model folder, out
root). Design choices:
- Input artifacts are fingerprinted by metadata, not content: stage.json's bytes (it records the
  producing config, metrics and a creation time, so any re-run of the upstream stage changes it) plus
  every file's relative path, size and mtime. Hashing weights would cost minutes for multi-GB
  checkpoints on every pipeline run; metadata catches re-runs and manual edits alike. A copied
  folder (new mtimes) is treated as new, which costs a recompute, never a wrong reuse.
- `out` and `tracking` are left out of the config part: where the artifact lands is derived from the
  key (content-addressed folders) and where it is logged does not change it.
- Hidden files (temp files of an interrupted writer) are ignored. gs:// artifacts are fingerprinted
  from one listing (path, size, CRC32C, generation of every object): no download.
- Nothing here imports Prefect, torch or MLflow: it runs inside cache-key functions on every call.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME

# Bump when the meaning of a cached result changes without a package version bump.
KEY_VERSION = 1
# `eval` only says how artifacts are scored afterwards (the evaluation keys its own results).
_NOT_IN_KEY = ("out", "tracking", "overwrite", "eval")
# Per-stage versions, bumped when one stage's output gains content its consumers rely on (export 2: the
# weight count and bits per weight in stage.json) or its numbers change for the same config (lrc 2: the
# svd init factors the residual to the teacher's weights). A stage not listed keeps the key it always had.
STAGE_VERSIONS = {"export": 2, "lrc": 2}


def _package_version() -> str:
    try:
        return importlib.metadata.version("wrinklefree")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def artifact_digest(path: str | Path) -> str:
    """Metadata digest of a local artifact (a folder, or a file together with its folder's stage.json)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"input artifact {p} does not exist; run the upstream stage first or pass an existing URI")
    h = hashlib.sha256()
    folder = p if p.is_dir() else p.parent
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        h.update(manifest.read_bytes())
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        st = f.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def remote_digest(uri: str, gcs_config=None) -> str:
    """Metadata digest of a gs:// artifact folder: every object's path, size, CRC32C and generation.

    Read from one listing, so fingerprinting never downloads; a rewritten object gets a new
    generation, which changes the digest like a new mtime does locally.
    """
    from wrinklefree_core.storage.gcs import GCSStore

    objects = GCSStore(gcs_config).list_prefix(uri)
    if not objects:
        raise FileNotFoundError(f"input artifact {uri} does not exist; run the upstream stage first or pass an existing URI")
    h = hashlib.sha256()
    for info in objects:
        h.update(f"{info.path}\0{info.size}\0{info.crc32c}\0{info.generation}\n".encode())
    return h.hexdigest()


def config_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as a dict, minus the fields that do not change the artifact."""
    data = cfg.model_dump(mode="json")
    for name in _NOT_IN_KEY:
        data.pop(name, None)
    return data


def stage_key(stage: str, cfg: RunConfig, input_digest: str | None, source_digest: str | None, out_root: str) -> str:
    """The hex cache key of one stage run (see the module docstring for what goes in)."""
    payload = {
        "key_version": KEY_VERSION,
        "package": _package_version(),
        "stage": stage,
        "config": config_fingerprint(cfg),
        "input": input_digest,
        "source": source_digest,
        "out_root": out_root,
    }
    if stage in STAGE_VERSIONS:
        payload["stage_version"] = STAGE_VERSIONS[stage]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def json_key(*parts: Any) -> str:
    """sha256 hex of JSON-serialisable parts (for the smaller keys, e.g. evaluation)."""
    return hashlib.sha256(json.dumps([KEY_VERSION, _package_version(), *parts], sort_keys=True, default=str).encode()).hexdigest()
