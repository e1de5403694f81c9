"""Compose a RunConfig from YAML groups and `key=value` overrides, with errors that help.

Command-line syntax (the same for every stage):
- `group=option` picks `configs/<group>/<option>.yaml` for a group (model, training, data, compute);
  `model=` also takes a path to a local HF model folder, or a gs:// URI of one; `data=` a path to a
  local text file or folder of text files (its only source).
- `a.b.c=value` overrides one field; the value is parsed as YAML (`true`, `3`, `[a, b]`, `null`).
- `key=value` for a top-level field (`out=DIR`, `seed=1`); `format=` is short for `export.format=`.

Order: configs/defaults.yaml, then group choices, then dotted overrides in the order given. The merged
dict is validated by RunConfig; pydantic errors are rewritten to name the dotted key and the closest
valid keys (difflib), so `training.optimzer.type=adamw` says "did you mean training.optimizer".
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from wrinklefree_core.config.run import GROUPS, RunConfig
from wrinklefree_core.config.flatten import deep_merge
from wrinklefree_core.uri import is_gcs


# Short top-level spellings the stage commands document (`wrinklefree export format=gguf`).
ALIASES = {"format": "export.format"}


class ConfigError(ValueError):
    """A config that cannot be composed or validated; the message says which key and what to use."""


def config_root() -> Path:
    """The configs/ folder: $WRINKLEFREE_CONFIG_DIR, else the one beside this package in the repo."""
    env = os.environ.get("WRINKLEFREE_CONFIG_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "configs"
    if not root.is_dir():
        raise ConfigError(f"config folder {root} not found; set WRINKLEFREE_CONFIG_DIR to the repo's configs/ folder")
    return root


def group_options(group: str) -> list[str]:
    """Option names available for a config group (YAML file stems)."""
    return sorted(p.stem for p in (config_root() / group).glob("*.yaml"))


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def _closest(word: str, choices: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, choices, n=n, cutoff=0.5)


def _suggest(word: str, choices: list[str]) -> str:
    close = _closest(word, choices)
    listed = ", ".join(close) if close else ", ".join(sorted(choices))
    return f"did you mean: {listed}" if close else f"valid choices: {listed}"


def _group_config(group: str, option: str) -> dict[str, Any]:
    """The dict for `group=option`; a path is accepted for the model group (HF folder) and the data group (text)."""
    path = config_root() / group / f"{option}.yaml"
    if path.is_file():
        return _load_yaml(path)
    if group == "model" and Path(option).expanduser().is_dir():
        folder = Path(option).expanduser().resolve()
        return {"name": folder.name, "source": "hf", "path": str(folder), "package": None, "gguf_file": None}
    if group == "model" and is_gcs(option):
        # Downloaded by the stage that reads it (artifacts/io.py); composing does no I/O.
        name = option.rstrip("/").rsplit("/", 1)[-1]
        return {"name": name, "source": "hf", "path": option, "package": None, "gguf_file": None}
    if group == "data" and Path(option).expanduser().exists():
        # One local text file or folder of text files as the only source (data/documents.py reads it).
        local = Path(option).expanduser().resolve()
        return {"config_name": local.name, "sources": [{"name": local.stem or "local", "path": str(local), "weight": 1.0}]}
    options = group_options(group)
    hint = _suggest(option, options)
    wanted = {"model": "a local HF model folder", "data": "a local text file or folder"}.get(group)
    if wanted and ("/" in option or "\\" in option or option.startswith(("~", "."))):
        # Written as a path: the path is what is wrong, not the option name.
        raise ConfigError(f"{group}={option}: no such file or folder ({Path(option).expanduser().resolve()}); it should be {wanted}")
    extra = f" (or a path to {wanted})" if wanted else ""
    raise ConfigError(f"unknown option '{option}' for config group '{group}'{extra}; {hint}")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(cfg: dict[str, Any], key: str, value: Any, model: type[BaseModel]) -> None:
    """Set cfg[a][b][c] = value, checking every path component against the pydantic schema."""
    parts = key.split(".")
    node: dict[str, Any] = cfg
    cls: type[BaseModel] | None = model
    for depth, part in enumerate(parts):
        if cls is not None:
            fields = list(cls.model_fields)
            if part not in fields:
                prefix = ".".join(parts[:depth])
                close = [f"{prefix}.{f}" if prefix else f for f in _closest(part, fields)]
                valid = [f"{prefix}.{f}" if prefix else f for f in fields]
                hint = f"did you mean: {', '.join(close)}" if close else f"valid keys: {', '.join(valid)}"
                raise ConfigError(f"unknown config key '{key}'; {hint}")
            cls = _nested_model(cls, part)
        if depth == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[:depth + 1])}' is not a section")
                node[part] = child
            node = child


def _nested_model(cls: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The pydantic model class of a sub-section field, or None for plain values."""
    annotation = cls.model_fields[field].annotation
    candidates = getattr(annotation, "__args__", (annotation,))
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent_loc, bad = err["loc"][:-1], str(err["loc"][-1])
            fields = _fields_at(parent_loc)
            lines.append(f"unknown config key '{loc}'; {_suggest(bad, fields)}")
        else:
            lines.append(f"invalid value for '{loc}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _fields_at(loc: tuple) -> list[str]:
    cls: type[BaseModel] | None = RunConfig
    for part in loc:
        if cls is None or isinstance(part, int):
            continue
        if str(part) not in cls.model_fields:
            return []
        cls = _nested_model(cls, str(part))
    return list(cls.model_fields) if cls is not None else []


def compose(stage: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build the validated RunConfig for `stage` from the defaults, group choices and overrides."""
    root = config_root()
    defaults = _load_yaml(root / "defaults.yaml")
    choices: dict[str, str] = dict(defaults.pop("defaults", {}))
    parsed = [_parse_override(o) for o in overrides]
    dotted: list[tuple[str, Any]] = []
    top_level: dict[str, Any] = {}
    for key, value in parsed:
        key = ALIASES.get(key, key)
        if key in GROUPS:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(f"'{key}=' takes the name of a {key} config ({', '.join(group_options(key))})")
            choices[key] = str(value)
        elif "." in key:
            dotted.append((key, value))
        else:
            top_level[key] = value
    cfg: dict[str, Any] = dict(defaults)
    for group in GROUPS:
        if group in choices:
            cfg[group] = deep_merge(cfg.get(group, {}) or {}, _group_config(group, choices[group]))
    cfg["stage"] = stage
    for key, value in top_level.items():
        _set_dotted(cfg, key, value, RunConfig)
    for key, value in dotted:
        _set_dotted(cfg, key, value, RunConfig)
    try:
        return RunConfig.model_validate(cfg)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
