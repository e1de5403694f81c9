"""Config sections as flow parameters: typed forms whose defaults are the stage's recipe.

The Prefect UI builds a run form from a flow's parameter schema. Typing a parameter with one of
our pydantic config sections (TrainingConfig, DataConfig, ...) gives a form of validated fields;
a section value travels on to the stage as `wrinklefree` overrides (`training.optimizer.lr=...`),
the language the stage task, its cache key and a SkyPilot job already speak.

Design choices:
- Defaults are what the stage's recipe composes to (`compose("train", ["training=unified"]).training`),
  not the bare pydantic defaults, so an untouched form runs the recipe.
- A section value is a patch on that recipe: a dict (a JSON form, a deployment's parameters) is
  merged into the recipe's values, a model instance contributes the fields it was given. So
  `{"max_steps": 2}` means "the recipe with 2 steps", never "pydantic's defaults with 2 steps".
- Only fields that differ from the recipe become overrides. Fields left at the recipe's value
  therefore still take the smoke budget, `common` and the escape-hatch `overrides` applied around
  them, exactly as the override lists of earlier versions did.
- Lists and dict-valued fields are replaced whole (a curriculum's phases, data sources); sections
  are compared field by field.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tasks.stage_plan import COMMAND, stage_items
from wrinklefree_core.config import RunConfig, compose


@functools.cache
def recipe_config(stage: str) -> RunConfig:
    """What a stage composes to with no overrides (the recipe, the default model and data; no input)."""
    if stage == "eval":
        return compose("eval", [])
    return compose(COMMAND[stage], stage_items(stage, []))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def patch_onto(base: BaseModel, value: Any) -> Any:
    """`value` (dict or model instance) applied on top of `base`, as a dict for pydantic to validate."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, dict):
        return value  # pydantic reports the wrong type
    return _merge(base.model_dump(), value)


def section(stage: str, name: str, description: str = "") -> Any:
    """Annotated type of RunConfig section `name` as a patch on `stage`'s recipe, defaulting to the recipe."""
    base = getattr(recipe_config(stage), name)
    return Annotated[type(base), BeforeValidator(functools.partial(patch_onto, base)), Field(default=base, description=description)]


def recipe_value(stage: str, name: str) -> Any:
    """A RunConfig field's value in `stage`'s recipe (the default a flow signature needs)."""
    return getattr(recipe_config(stage), name)


def render(value: Any) -> str:
    """A value as override text that compose's YAML parsing reads back unchanged (1e-05 included)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, sort_keys=False, allow_unicode=True).strip()
    if text.endswith("\n..."):  # the document end marker PyYAML adds after a plain scalar
        text = text[: -len("\n...")]
    if yaml.safe_load(text) != value:
        raise ValueError(f"cannot write {value!r} as an override value")
    return text


def changed_items(key: str, value: Any, base: Any) -> list[str]:
    """`key=value` overrides for every field of `value` that differs from `base`, sections field by field."""
    if isinstance(value, BaseModel) and type(value) is type(base):
        items: list[str] = []
        for name in type(value).model_fields:
            items += changed_items(f"{key}.{name}", getattr(value, name), getattr(base, name))
        return items
    dump = [v.model_dump(mode="json") if isinstance(v, BaseModel) else _jsonable(v) for v in (value, base)]
    return [] if dump[0] == dump[1] else [f"{key}={render(dump[0])}"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else _jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class StageSections(BaseModel):
    """Typed settings of one stage: RunConfig sections (patches on the recipe) plus raw overrides.

    Subclasses declare fields named like RunConfig's (or mapped through PATHS); `items()` turns
    what differs from each field's default into overrides, then appends `overrides`.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    PATHS: ClassVar[dict[str, str]] = {}

    overrides: list[str] = Field(
        default_factory=list,
        description="Extra `wrinklefree` overrides applied after the fields above, e.g. `training=stage2_pretrain` or `data=python_docs`.",
    )

    def items(self) -> list[str]:
        """The overrides this form amounts to: changed fields first, then `overrides` (later wins)."""
        items: list[str] = []
        for name, field in type(self).model_fields.items():
            if name != "overrides":
                items += changed_items(self.PATHS.get(name, name), getattr(self, name), field.default)
        return items + list(self.overrides)
