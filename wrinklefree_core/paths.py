"""Where WrinkleFree keeps things that outlive a run: converted source models, tokenizers, stores."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$WRINKLEFREE_CACHE, else ~/.cache/wrinklefree; created on first use."""
    root = Path(os.environ.get("WRINKLEFREE_CACHE") or Path.home() / ".cache" / "wrinklefree")
    root.mkdir(parents=True, exist_ok=True)
    return root


def mlflow_store_uri(configured: str | None) -> str:
    """`configured`, else the default MLflow sqlite store under the cache folder (created here).

    Training stages and the orchestration layer both log here, so a pipeline run and its stage runs
    land in one store unless a server URI is configured.
    """
    if configured:
        return configured
    folder = cache_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifact_location() -> str:
    """Artifact root for experiments created in the default MLflow store."""
    folder = cache_dir() / "mlflow" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()
