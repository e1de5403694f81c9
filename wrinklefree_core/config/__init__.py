"""Typed configuration: pydantic models (the single source of truth) composed from YAML groups.

`compose(stage, overrides)` reads `configs/defaults.yaml`, the chosen option of each group
(`configs/<group>/<option>.yaml`), then applies `key=value` overrides, and validates the result as a
`RunConfig`. Errors name the offending key and the closest valid choices.
"""

from wrinklefree_core.config.compose import ConfigError, compose, config_root, group_options
from wrinklefree_core.config.run import RunConfig

__all__ = ["ConfigError", "RunConfig", "compose", "config_root", "group_options"]
