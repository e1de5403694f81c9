"""StageResult: what every stage returns (its artifact here, its metrics, where it was published)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage produced."""

    out: Path | None  # the artifact on this machine (a gs:// output: the local copy uploaded); None: eval writes none
    metrics: dict[str, float]
    uri: str = field(default="")  # where the artifact was published (gs://... or the local path)
    summary: str = ""  # lines for a person: what was written and how it checked out
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able results beyond metrics (eval's per-source rows)

    @property
    def location(self) -> str:
        """The published location, as the next stage should be given it."""
        return self.uri or (str(self.out) if self.out is not None else "")
