"""Base class for every config section: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. extra='forbid' turns a typo into an error instead of a silently ignored key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
