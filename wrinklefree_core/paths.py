"""Where WrinkleFree keeps things that outlive a run: converted source models, tokenizers, stores."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$WRINKLEFREE_CACHE, else ~/.cache/wrinklefree; created on first use."""
    root = Path(os.environ.get("WRINKLEFREE_CACHE") or Path.home() / ".cache" / "wrinklefree")
    root.mkdir(parents=True, exist_ok=True)
    return root
