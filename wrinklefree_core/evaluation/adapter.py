"""How much of a model's quality could come from full-precision adapters: LRC parameters as a share of the projections.

    adapter share = (lrc_U + lrc_V elements) / (elements of the ternary projection weights)

The denominator equals the teacher's projection parameters, because conversion swaps exactly those
nn.Linear modules (bitnet.target_modules outside bitnet.skip_layers) for BitLinear of the same
shape. Both counts are read from the checkpoint's safetensors header and config.json, so no model
is built. A GGUF row is counted through the checkpoint it was exported from: the LoRA adapter GGUF
holds the same U and V (padded widths are cost, which the size columns already count).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wrinklefree_core.models.checkpoint import CONFIG_NAME, SETTINGS_KEY, WEIGHTS_NAME, is_bitnet_checkpoint
from wrinklefree_core.models.lrc import LRC_PARAM_NAMES


def _is_projection(name: str, targets: set[str], skip: set[int]) -> bool:
    parts = name.split(".")
    if len(parts) < 3 or parts[-1] != "weight" or parts[-2] not in targets:
        return False
    layer = next((int(parts[i + 1]) for i, p in enumerate(parts[:-1]) if p == "layers" and parts[i + 1].isdigit()), None)
    return layer is not None and layer not in skip


def adapter_share(checkpoint: str | Path) -> dict[str, Any] | None:
    """{"adapter_params", "projection_params", "adapter_share"} of a BitNet checkpoint folder; None for anything else."""
    from safetensors import safe_open

    folder = Path(checkpoint)
    if not is_bitnet_checkpoint(folder) or not (folder / WEIGHTS_NAME).is_file():
        return None
    settings = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))[SETTINGS_KEY]
    targets, skip = set(settings.get("target_modules", [])), set(settings.get("skip_layers", []))
    adapter = projection = 0
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        for name in f.keys():
            size = math.prod(int(d) for d in f.get_slice(name).get_shape())
            if name.rsplit(".", 1)[-1] in LRC_PARAM_NAMES:
                adapter += size
            elif _is_projection(name, targets, skip):
                projection += size
    return {"adapter_params": adapter, "projection_params": projection, "adapter_share": adapter / max(projection, 1)}
