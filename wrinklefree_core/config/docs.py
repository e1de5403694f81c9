"""Render docs/configuration.md from the pydantic config models (the single source of truth).

`python -m wrinklefree_core.config.docs --write` regenerates the file; a test fails when it is stale.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from wrinklefree_core.config.compose import group_options
from wrinklefree_core.config.run import GROUPS, RunConfig

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

HEADER = """# Configuration

Generated from the pydantic models in `wrinklefree_core/config/` by
`python -m wrinklefree_core.config.docs --write`; do not edit by hand (a test fails when it is stale).

Every stage command takes the same overrides:

- `group=option` picks `configs/<group>/<option>.yaml` (groups: model, training, data, compute);
  `model=` also accepts a path to a local HF model folder.
- `a.b.c=value` sets one field; values are parsed as YAML (`true`, `3`, `1e-4`, `[a, b]`, `null`).
- `key=value` sets a top-level field, e.g. `out=outputs/run1`.

Example: `wrinklefree config train model=smollm2_135m training=unified training.max_steps=100 training.optimizer.type=adamw`
prints the resolved config without running anything. Unknown keys, wrong types and unknown options
exit with status 2 and name the closest valid choices.
"""


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump() for v in value]
    return f"`{json.dumps(value)}`"


def _nested(annotation) -> type[BaseModel] | None:
    for cand in typing.get_args(annotation) or (annotation,):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _nested(field.annotation)
        if sub is not None and typing.get_origin(field.annotation) is not list:
            rows.append(f"| `{key}` | section | {_default(field)} | {field.description or ''} |")
            rows.extend(_rows(sub, key + "."))
        else:
            rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
    return rows


def render() -> str:
    """The full Markdown text of docs/configuration.md."""
    parts = [HEADER, "## Config groups\n"]
    for group in GROUPS:
        parts.append(f"- `{group}`: {', '.join(f'`{o}`' for o in group_options(group))}")
    parts.append("\n## Fields\n")
    parts.append("| key | type | default | description |\n|---|---|---|---|")
    parts.extend(_rows(RunConfig))
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH} instead of printing")
    args = parser.parse_args()
    text = render()
    if args.write:
        DOC_PATH.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
