"""The `data` config group: text sources, their mixture weights, tokenization and packing."""

from __future__ import annotations

from pydantic import Field

from wrinklefree_core.config.base import Section


class SourceConfig(Section):
    """One text source of a mixture."""

    name: str = Field(..., description="Short name used in logs and mixture weights.")
    path: str = Field(
        ...,
        description="package:shakespeare | package:python_docs | package:python_stdlib | package:licenses, a local file/folder, or an HF dataset id.",
    )
    weight: float = Field(1.0, gt=0, description="Initial mixture weight (normalised over sources).")


class DataConfig(Section):
    """Training data."""

    config_name: str = Field("shakespeare", description="Name of this data config (the option chosen in the data group).")
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(name="shakespeare", path="package:shakespeare")],
        description="Text sources and their initial weights.",
    )
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Fraction of each source's documents held out for validation.")
    seed: int = Field(0, description="Seed for shuffling and the held-out split.")
