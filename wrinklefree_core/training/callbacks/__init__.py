"""Training callbacks, one concern per file: resumable checkpoints, the NaN guard, throughput, influence remixing,
progress (a bar on a terminal, ETA lines off one)."""

from wrinklefree_core.training.callbacks.checkpointing import ResumableCheckpoint
from wrinklefree_core.training.callbacks.influence import InfluenceRemixing
from wrinklefree_core.training.callbacks.nan_guard import NaNGuard
from wrinklefree_core.training.callbacks.progress import ProgressLog, progress_callbacks
from wrinklefree_core.training.callbacks.throughput import Throughput

__all__ = ["InfluenceRemixing", "NaNGuard", "ProgressLog", "ResumableCheckpoint", "Throughput", "progress_callbacks"]
