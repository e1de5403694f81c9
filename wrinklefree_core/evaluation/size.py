"""What a GGUF costs on disk: bytes with its LoRA adapter counted, and bits per weight of the model it holds.

    bits_per_weight = 8 * (base file bytes + adapter file bytes) / weights

Design choices:
- The numerator is every byte a user ships (metadata, tokenizer, alignment and the adapter included),
  so no part of the artifact is left out of the comparison with llama.cpp's own files.
- The denominator is the weight count of the model the file computes, taken from the stage.json
  beside the file (`metrics.weights`: the export's and the baselines' writers record it): a padded
  export holds zeros that are cost, not weights. A GGUF with no such record counts its tensors'
  elements, which is exact for any file that is not padded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, read_manifest


def file_weights(gguf: Path) -> int:
    """Elements of every tensor in the GGUF (a tied embedding counted once, as it is stored)."""
    from gguf import GGUFReader

    return sum(int(math.prod(int(d) for d in t.shape)) for t in GGUFReader(str(gguf)).tensors)


def recorded_weights(gguf: Path) -> int | None:
    """The weight count the stage.json beside the GGUF records, when it records one."""
    if not (gguf.parent / MANIFEST_NAME).is_file():
        return None
    weights = read_manifest(gguf.parent).metrics.get("weights")
    return int(weights) if weights else None


def gguf_size(gguf: str | Path) -> dict[str, Any]:
    """{"bytes", "base_bytes", "adapter_bytes", "mib", "weights", "bits_per_weight"} of a GGUF and its adapter."""
    from wrinklefree_core.export.gguf_lora import lora_path_for

    gguf = Path(gguf)
    adapter = lora_path_for(gguf)
    base_bytes = gguf.stat().st_size
    adapter_bytes = adapter.stat().st_size if adapter.is_file() else 0
    weights = recorded_weights(gguf) or file_weights(gguf)
    total = base_bytes + adapter_bytes
    return {
        "bytes": total,
        "base_bytes": base_bytes,
        "adapter_bytes": adapter_bytes,
        "mib": total / 2**20,
        "weights": weights,
        "bits_per_weight": 8 * total / max(1, weights),
    }
