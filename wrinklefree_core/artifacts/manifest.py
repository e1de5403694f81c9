"""stage.json: the manifest every stage output carries.

It records what produced the artifact (stage name, the fully resolved config, input URIs), what came
out (metrics) and with which software (library versions, git commit when run from a checkout), so a
later stage can find its teacher (`inputs["source_model"]`) and a person can reproduce the run.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wrinklefree_core.config.redact import redact

MANIFEST_NAME = "stage.json"
_VERSIONED = ("wrinklefree", "torch", "transformers", "safetensors", "tokenizers", "gguf", "pydantic", "triton")


class StageManifest(BaseModel):
    """Contents of stage.json."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(..., description="Stage that wrote the artifact (convert, train, lrc, distill, export).")
    created_at: str = Field(..., description="UTC time the stage finished, ISO 8601.")
    config: dict[str, Any] = Field(..., description="The resolved RunConfig, as a dict.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input artifact URIs by role (source_model, checkpoint, teacher).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Scalar results of the stage.")
    versions: dict[str, str] = Field(default_factory=dict, description="Python and library versions, git commit.")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that determine an artifact's numbers."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    commit = _git_commit()
    if commit:
        versions["git_commit"] = commit
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_manifest(stage: str, config: dict[str, Any], inputs: dict[str, str], metrics: dict[str, float]) -> StageManifest:
    """A manifest stamped with the current time and library versions (URIs' secrets masked: config/redact.py)."""
    return StageManifest(
        stage=stage,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        config=redact(config),
        inputs=redact(inputs),
        metrics={k: float(v) for k, v in metrics.items()},
        versions=library_versions(),
    )


def manifest_json(manifest: StageManifest) -> str:
    """Serialized stage.json text."""
    return json.dumps(manifest.model_dump(), indent=2, sort_keys=False) + "\n"


def source_model_name(folder: str | Path, default: str) -> str:
    """The name of the model a checkpoint folder descends from (its stage.json's config), else `default`."""
    try:
        return str(read_manifest(folder).config["model"]["name"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return default


def read_manifest(folder: str | Path) -> StageManifest:
    """Read and validate a folder's stage.json."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} was not written by a WrinkleFree stage")
    return StageManifest.model_validate_json(path.read_text())
