"""Base class for every config section: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. extra='forbid' turns a typo into an error instead of a silently ignored key.

    allow_inf_nan=False: no setting means anything at inf or nan (`lr=inf` would pass `gt=0` and
    train to nan), so they are refused where they are typed, not found steps later.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
