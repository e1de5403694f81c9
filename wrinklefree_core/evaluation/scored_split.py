"""Which data sources `wrinklefree eval` scores whole, and which on their held-out split.

Design choices:
- Scoring a text file of one's own (a wikitext dump, a code file) is the common evaluation; the
  held-out split exists only so that a model is not scored on text it trained on. So `eval.split=auto`
  scores a local file or folder whole unless the artifact, or any stage before it, trained or
  calibrated on that same path; bundled corpora (`package:`) and hub datasets, which the pipeline trains
  on, keep their held-out split. `heldout` and `all` force one or the other.
- "Trained on" is read from the stage.json chain: each manifest's resolved `data.sources`, then the
  local folders its `inputs` name (checkpoint, source model, teacher), each visited once. A path
  seen nowhere in that chain counts as unseen; an HF folder has no chain, so a teacher has seen nothing.
- Every row of one comparison uses the set resolved for the artifact under test, so the teacher and
  the baselines are scored on exactly the same rows as the GGUF.
"""

from __future__ import annotations

from pathlib import Path

from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, read_manifest
from wrinklefree_core.config.run import RunConfig


def _local_path(spec: str) -> Path | None:
    """The resolved local path of a data source spec, or None for a bundled corpus or hub dataset."""
    if spec.startswith("package:") or "://" in spec:
        return None
    path = Path(spec).expanduser()
    return path.resolve() if path.exists() else None


def trained_paths(artifact: Path) -> set[Path]:
    """Local data paths that `artifact` (a checkpoint folder) or any stage before it read as training or calibration data."""
    seen: set[Path] = set()
    visited: set[Path] = set()
    pending = [artifact]
    while pending:
        folder = pending.pop().expanduser().resolve()
        if folder in visited or not (folder / MANIFEST_NAME).is_file():
            continue
        visited.add(folder)
        manifest = read_manifest(folder)
        for source in (manifest.config.get("data") or {}).get("sources") or []:
            path = _local_path(str(source.get("path", "")))
            if path is not None:
                seen.add(path)
        pending.extend(Path(uri) for uri in manifest.inputs.values() if uri and "://" not in uri and Path(uri).is_dir())
    return seen


def whole_sources(cfg: RunConfig, artifact: Path) -> frozenset[str]:
    """Names of the `cfg.data` sources to score whole when evaluating `artifact` (folder or the GGUF's checkpoint)."""
    if cfg.eval.split == "heldout":
        return frozenset()
    if cfg.eval.split == "all":
        return frozenset(src.name for src in cfg.data.sources)
    seen = trained_paths(artifact) if artifact.is_dir() else set()
    return frozenset(
        src.name for src in cfg.data.sources if (path := _local_path(src.path)) is not None and path not in seen
    )
