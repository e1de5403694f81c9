"""StageResult: what every stage returns (its artifact here, its metrics, where it was published)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """What a stage produced."""

    out: Path  # the artifact on this machine (for a gs:// output, the local copy that was uploaded)
    metrics: dict[str, float]
    uri: str = field(default="")  # where the artifact was published (gs://... or the local path)

    @property
    def location(self) -> str:
        """The published location, as the next stage should be given it."""
        return self.uri or str(self.out)
