"""A stage run's MLflow params: the config sections that stage reads, and tags for what the user changed.

Every RunConfig holds every section, but convert never reads the optimizer and export never reads
the data mixture; logging them all (113 keys, training hyperparameters on an export run) buried
the few that matter. Each stage names the sections (or single fields) its code reads (`Tracked`,
from its registry entry in stages/); the compute section is cut to the fields of its backend (a
local run has no accelerator spec). The stage is the pipeline's name (lrc, distill), not the
command (train).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wrinklefree_core.config.flatten import deep_merge, flatten_config, recordable

# The run's own fields, which every stage that writes an artifact reads.
RUN_FIELDS = ("stage", "seed", "checkpoint", "out", "overwrite")


@dataclass(frozen=True)
class Tracked:
    """What MLflow records of a stage: its name, its number in the pipeline (0: none), the config it reads."""

    name: str
    number: int
    sections: tuple[str, ...]  # top-level sections, or dotted fields, that its code reads
# The compute fields that mean something for a backend (the rest configure the other one).
_COMPUTE_LOCAL = ("backend", "device", "precision", "devices", "strategy")


def _pick(config: dict[str, Any], dotted: str) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    if head not in config:
        return {}
    if not rest:
        return {head: config[head]}
    inner = config[head]
    return {head: _pick(inner, rest)} if isinstance(inner, dict) else {}


def stage_config(config: dict[str, Any], stage: Tracked) -> dict[str, Any]:
    """The part of a resolved config (model_dump) that `stage` reads."""
    picked: dict[str, Any] = {}
    for dotted in stage.sections:
        picked = deep_merge(picked, _pick(config, dotted))
    compute = picked.get("compute")
    if isinstance(compute, dict) and compute.get("backend", "local") == "local":
        picked["compute"] = {k: v for k, v in compute.items() if k in _COMPUTE_LOCAL}
    picked["stage"] = stage.name
    return picked


def stage_params(config: dict[str, Any], stage: Tracked) -> dict[str, str]:
    """The MLflow params of a `stage` run: its sections flattened to dotted keys, empty values left out."""
    return recordable(flatten_config(stage_config(config, stage)))


def changed_tags(config: dict[str, Any], defaults: dict[str, Any], stage: Tracked) -> dict[str, str]:
    """`changed.<key>` = value for every param of `stage` that differs from `defaults` (the same stage without the user's changes)."""
    now = flatten_config(stage_config(config, stage))
    base = flatten_config(stage_config(defaults, stage))
    return recordable({f"changed.{k}": v for k, v in now.items() if base.get(k) != v and k not in ("checkpoint", "out")})
