"""Config sections as flow parameters: typed forms that show, and run, the values a stage will use.

The Prefect UI builds a run form from a flow's parameter schema. Typing a parameter with one of
our pydantic config sections (TrainingConfig, DataConfig, ...) gives a form of validated fields;
a section value travels on to the stage as `wrinklefree` overrides (`training.optimizer.lr=...`),
the language the stage task, its cache key and a SkyPilot job already speak.

Design choices:
- A form shows what will run. Defaults are the stage's *pipeline context*: its recipe plus
  PIPELINE_DEFAULTS (the training data, no leftover training state), i.e. what an untouched
  pipeline run composes to (`context_config("train")`), not the recipe file alone and not the bare
  pydantic defaults. A pipeline preset (the smoke budget) fills its forms with its own context.
- Every field given is what runs; a field not given takes the context. The Prefect UI submits every
  field of a form, so there the values shown are the values run. A partial section (`--params`,
  Python, a deployment's parameters) is a patch: `{"max_steps": 2}` is the context with 2 steps.
  Which fields were given is pydantic's `model_fields_set`, kept per nested section; a default
  section has none given.
- Only given fields that differ from the context become overrides, so an untouched form and a
  pipeline run with the same settings have the same cache key.
- Lists and dict-valued fields are replaced whole (a curriculum's phases, data sources); sections
  are compared field by field.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, WrapValidator

from tasks.stage_plan import STAGES, stage_items
from wrinklefree_core.stages import base as stage_registry
from wrinklefree_core.config import RunConfig, compose
from wrinklefree_core.config.flatten import deep_merge

DEFAULT_MODEL = "smollm2_135m"
# The pipeline trains on one domain and scores two others it never saw (configs/data/heldout_eval.yaml):
# a recipe that only fits its training text cannot look good in the table. A stage's output is
# content-addressed and never continued, so its resumable state is deleted once the output is
# written (a failed stage keeps it, and its rerun resumes).
PIPELINE_DEFAULTS = {"stages": ["data=python_docs", "training.keep_state=false"], "eval": ["data=heldout_eval"]}


def context_items(stage: str, model: str = DEFAULT_MODEL, extra: tuple[str, ...] = ()) -> list[str]:
    """The overrides every field of `stage`'s forms defaults to: the model, PIPELINE_DEFAULTS, then `extra`."""
    return [f"model={model}", *PIPELINE_DEFAULTS["eval" if stage == "eval" else "stages"], *extra]


@functools.cache
def context_config(stage: str, model: str = DEFAULT_MODEL, extra: tuple[str, ...] = ()) -> RunConfig:
    """What `stage` (a pipeline stage or "eval") composes to from its context alone (no input, no form)."""
    items = context_items(stage, model, extra)
    if stage == "eval":
        return compose("eval", items)
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'")
    return compose(stage_registry.get(stage).command, stage_items(stage, items))


def config_value(cfg: RunConfig, path: str) -> Any:
    """The value at a dotted path of a RunConfig (`training.seq_len`)."""
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def mark_given(value: Any, given: dict[str, Any] | None) -> Any:
    """Set `model_fields_set` of `value` and its nested sections to the keys of `given` (None: none given)."""
    if not isinstance(value, BaseModel):
        return value
    given = given or {}
    names = [name for name in type(value).model_fields if name in given]
    object.__setattr__(value, "__pydantic_fields_set__", set(names))
    for name, field_value in value:
        if isinstance(field_value, BaseModel):
            patch = given.get(name)
            if isinstance(patch, BaseModel):
                patch = given_fields(patch)
            mark_given(field_value, patch if isinstance(patch, dict) else None)
    return value


def given_fields(value: BaseModel) -> dict[str, Any]:
    """The inverse of mark_given: the tree of given field names (a leaf is True)."""
    tree: dict[str, Any] = {}
    for name in type(value).model_fields:
        if name in value.model_fields_set:
            field_value = getattr(value, name)
            tree[name] = given_fields(field_value) if isinstance(field_value, BaseModel) else True
    return tree


def with_values(value: BaseModel, values: BaseModel) -> BaseModel:
    """`values` (a section of the same type) carrying the given-field marks of `value`."""
    return mark_given(values.model_copy(deep=True), given_fields(value))


def _validate_patch(base: BaseModel, value: Any, handler) -> Any:
    if isinstance(value, BaseModel):
        return handler(value)  # an instance keeps the fields it was given (its model_fields_set)
    if not isinstance(value, dict):
        return handler(value)  # pydantic reports the wrong type
    # Validated complete (the context's values under the patch) so a section's own checks see
    # a whole section; then only the patch's keys count as given.
    return mark_given(handler(deep_merge(base.model_dump(), value)), value)


def section(stage: str, name: str, title: str, description: str = "") -> Any:
    """Annotated type of RunConfig section `name` in `stage`'s forms, defaulting to its pipeline context."""
    base = config_value(context_config(stage), name)
    return Annotated[
        type(base),
        WrapValidator(functools.partial(_validate_patch, base)),
        Field(default=context_value(stage, name), title=title, description=description),
    ]


def context_value(stage: str, name: str) -> Any:
    """A section's default in `stage`'s forms (what a flow signature needs), with no field given."""
    return mark_given(config_value(context_config(stage), name).model_copy(deep=True), None)


def render(value: Any) -> str:
    """A value as override text that compose's YAML parsing reads back unchanged (1e-05 included)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, sort_keys=False, allow_unicode=True).strip()
    if text.endswith("\n..."):  # the document end marker PyYAML adds after a plain scalar
        text = text[: -len("\n...")]
    if yaml.safe_load(text) != value:
        raise ValueError(f"cannot write {value!r} as an override value")
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def changed_items(key: str, value: Any, context: Any) -> list[str]:
    """`key=value` overrides for every given field of `value` that differs from `context`, sections field by field."""
    if isinstance(value, BaseModel) and type(value) is type(context):
        items: list[str] = []
        for name in type(value).model_fields:
            if name in value.model_fields_set:
                items += changed_items(f"{key}.{name}", getattr(value, name), getattr(context, name))
        return items
    new, old = _jsonable(value), _jsonable(context)
    return [] if new == old else [f"{key}={render(new)}"]


class StageSections(BaseModel):
    """Typed settings of one stage: RunConfig sections (given fields over the context) plus raw overrides.

    Subclasses declare fields named like RunConfig's (or mapped through PATHS: form field -> dotted
    RunConfig path); `items(context)` turns the given fields that differ from `context` into
    overrides. `overrides` are applied after every form field (flows/params.py).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    PATHS: ClassVar[dict[str, str]] = {}

    overrides: list[str] = Field(
        default_factory=list,
        description="Extra `wrinklefree` overrides, applied after every field of the form, e.g. `training=stage2_pretrain` or `data=python_docs`.",
    )

    @classmethod
    def form_fields(cls) -> dict[str, str]:
        """Form field -> the dotted RunConfig path it stands for (every field but `overrides`)."""
        return {name: cls.PATHS.get(name, name) for name in cls.model_fields if name != "overrides"}

    def items(self, context: RunConfig) -> list[str]:
        """The overrides the form's given fields amount to on top of `context` (`overrides` not included)."""
        items: list[str] = []
        for name, path in self.form_fields().items():
            if name in self.model_fields_set:
                items += changed_items(path, getattr(self, name), config_value(context, path))
        return items

    def showing(self, cfg: RunConfig) -> "StageSections":
        """A copy whose fields show `cfg`'s values (what runs), with the same fields marked as given."""
        update = {}
        for name, path in self.form_fields().items():
            value = config_value(cfg, path)
            current = getattr(self, name)
            update[name] = with_values(current, value) if isinstance(current, BaseModel) else value
        shown = self.model_copy(update=update)
        object.__setattr__(shown, "__pydantic_fields_set__", set(self.model_fields_set))
        return shown
