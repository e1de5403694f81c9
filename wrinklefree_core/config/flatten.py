"""Nested config dicts: flattened into dotted keys (how every tracker, MLflow params, stores them) and merged."""

from __future__ import annotations

import json
from typing import Any

from wrinklefree_core.config.redact import redact_text


def flatten_values(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for every leaf of a nested dict (an empty dict is a leaf), values as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Leaves that say nothing (unset optional fields, empty lists): left out of MLflow params.
EMPTY_VALUES = frozenset({"", "null", "[]", "{}"})


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a.b.c": value-as-text} for every leaf of a nested dict (non-strings as JSON)."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten_values(config, prefix).items()}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `update` merged in, nested dicts merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def recordable(params: dict[str, Any]) -> dict[str, str]:
    """Params as a run records them (MLflow): values as text, URIs' secrets masked, empty values left out."""
    return {key: redact_text(str(value)) for key, value in params.items() if str(value) not in EMPTY_VALUES}
