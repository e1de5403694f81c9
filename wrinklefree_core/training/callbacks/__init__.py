"""Training callbacks, one concern per file: resumable checkpoints, the NaN guard, throughput, influence remixing."""

from wrinklefree_core.training.callbacks.checkpointing import ResumableCheckpoint
from wrinklefree_core.training.callbacks.influence import InfluenceRemixing
from wrinklefree_core.training.callbacks.nan_guard import NaNGuard
from wrinklefree_core.training.callbacks.throughput import Throughput

__all__ = ["InfluenceRemixing", "NaNGuard", "ResumableCheckpoint", "Throughput"]
