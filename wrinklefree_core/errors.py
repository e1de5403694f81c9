"""The exceptions that mean "the user asked for something that cannot be done", not a bug.

The CLI prints these as one `error: ...` line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from wrinklefree_core.config.compose import ConfigError
from wrinklefree_core.data.corpora import CorpusError
from wrinklefree_core.data.documents import DataSourceError
from wrinklefree_core.evaluation.ptq import BaselineError
from wrinklefree_core.export.gguf_layout import ExportError
from wrinklefree_core.export.hf_export import HFExportError
from wrinklefree_core.export.verify import VerificationError
from wrinklefree_core.models.architectures import UnsupportedArchitectureError
from wrinklefree_core.models.checkpoint import CheckpointError
from wrinklefree_core.models.sources import ModelSourceError
from wrinklefree_core.uri import StorageError
from wrinklefree_core.tracking.model_registry import ModelUploadError
from wrinklefree_core.tracking.store import TrackingUnavailableError
from wrinklefree_core.training.errors import ResumeError, TeacherError, TrainingDivergedError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CorpusError,
    ModelSourceError,
    UnsupportedArchitectureError,
    CheckpointError,
    DataSourceError,
    ExportError,
    HFExportError,
    VerificationError,
    StorageError,
    TrainingDivergedError,
    ResumeError,
    TeacherError,
    BaselineError,
    TrackingUnavailableError,
    ModelUploadError,
    FileExistsError,
    FileNotFoundError,
)
