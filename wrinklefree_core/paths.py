"""Where WrinkleFree keeps things that outlive a run: converted source models, tokenizers, stores."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$WRINKLEFREE_CACHE, else ~/.cache/wrinklefree; created on first use."""
    root = Path(os.environ.get("WRINKLEFREE_CACHE") or Path.home() / ".cache" / "wrinklefree")
    root.mkdir(parents=True, exist_ok=True)
    return root


def mlflow_configured_uri(configured: str | None) -> str | None:
    """`configured` (tracking.mlflow_uri), else $WRINKLEFREE_MLFLOW_STORE, else None (the default store).

    Not MLflow's own MLFLOW_TRACKING_URI: `mlflow.set_tracking_uri()` (which Lightning's logger calls)
    rewrites that variable for the whole process, so one stage's store would become the next one's.
    """
    return configured or os.environ.get("WRINKLEFREE_MLFLOW_STORE") or None


def mlflow_store_uri(configured: str | None) -> str:
    """`configured`, else $WRINKLEFREE_MLFLOW_STORE, else the default MLflow sqlite store under the cache folder (created here).

    Every stage and the orchestration layer log here, so a pipeline run and its stage runs land in
    one store unless a server URI is configured.
    """
    uri = mlflow_configured_uri(configured)
    if uri:
        return uri
    folder = cache_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifact_location(store: str) -> str | None:
    """Artifact root for experiments created in `store`: beside a sqlite file (`<folder>/artifacts`); None for
    a server, which decides (MLflow's own default for a sqlite store is ./mlruns in the working directory)."""
    if not store.startswith("sqlite:///"):
        return None
    folder = Path(store.removeprefix("sqlite:///")).parent / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()
