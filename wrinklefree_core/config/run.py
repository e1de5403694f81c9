"""RunConfig: everything one stage run needs, as one validated object.

Groups (`model`, `training`, `data`, `compute`) are chosen by name on the command line and filled
from `configs/<group>/<option>.yaml`; `bitnet` holds the conversion settings; the remaining fields are
per-run (output location, seed, tracking).
"""

from __future__ import annotations

from pydantic import Field

from wrinklefree_core.config.base import Section
from wrinklefree_core.config.compute import ComputeConfig
from wrinklefree_core.config.data import DataConfig
from wrinklefree_core.config.eval import EvalConfig
from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.config.model import ModelConfig
from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.config.training import TrainingConfig
from wrinklefree_core.config.bitnet import BitNetSettings

GROUPS = ("model", "training", "data", "compute")


class TrackingConfig(Section):
    """Where runs are logged."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; null = $WRINKLEFREE_MLFLOW_STORE, else a sqlite store under the cache folder.")
    experiment: str = Field("wrinklefree", description="MLflow experiment name.")
    model_upload: bool = Field(
        True, description="Copy the exported GGUF and its adapter into the export run's MLflow artifacts; false = record their path only."
    )
    register_model: bool = Field(True, description="Register each uploaded GGUF as a version of the MLflow model wrinklefree-<model>.")
    system_metrics: bool = Field(True, description="Sample CPU, memory, disk and GPU use into training runs (MLflow's system metrics).")
    system_metrics_interval_s: float = Field(10.0, gt=0, description="Seconds between two system-metrics samples.")


class RunConfig(Section):
    """The resolved configuration of one stage run."""

    stage: str = Field("convert", description="Stage this config runs: convert, train, eval, export.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Full-precision source model.")
    bitnet: BitNetSettings = Field(default_factory=BitNetSettings, description="How the model is converted to BitNet.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training recipe.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and held-out data.")
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="Where and on what the stage runs.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Export format, GGUF types and verification.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="What a GGUF is scored and timed against (`wrinklefree eval`, the pipeline's table).")
    gcs: GCSConfig = Field(
        default_factory=GCSConfig, description="Google Cloud Storage for gs:// artifacts: client settings and default output bucket."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")
    checkpoint: str | None = Field(None, description="Input checkpoint URI for stages that read one (export, eval, train).")
    teacher: str | None = Field(
        None,
        description="Full-precision teacher for distillation / LRC (an HF folder, a BitNet checkpoint or a model config name); "
        "null = the source model named in the input checkpoint's stage.json.",
    )
    out: str | None = Field(None, description="Output artifact URI (local folder, file, or gs://bucket/prefix).")
    overwrite: bool = Field(False, description="Replace a finished output at out= that another stage or config wrote (otherwise refused).")
    seed: int = Field(0, description="Global random seed.")
