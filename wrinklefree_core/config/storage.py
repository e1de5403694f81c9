"""The `gcs` config section: where remote artifacts go and how the GCS client behaves.

Design choices:
- Credentials are never configured here: they come from the environment (Application Default
  Credentials or GOOGLE_APPLICATION_CREDENTIALS; STORAGE_EMULATOR_HOST selects an emulator), so a
  resolved config can be logged to MLflow without leaking secrets.
- `enabled`/`bucket`/`prefix` only choose a default output location; a gs:// URI given explicitly
  (out=gs://..., checkpoint=gs://...) is used whatever `enabled` says, with the client settings below.
- Retries count attempts (not a deadline), so "how long until a dead bucket is reported" is
  predictable: about retry_backoff_s * (2**max_retries - 1) seconds plus the request timeouts.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from wrinklefree_core.config.base import Section
from wrinklefree_core.uri import validate_bucket_name, validate_prefix


class GCSConfig(Section):
    """Google Cloud Storage for stage artifacts."""

    enabled: bool = Field(False, description="Write stage outputs to gs://bucket/prefix/... by default.")
    bucket: str | None = Field(None, description="GCS bucket for default outputs (required when enabled).")
    prefix: str = Field("wrinklefree", description="Object-name prefix inside the bucket for default outputs.")
    project: str | None = Field(None, description="Google Cloud project for the client; null = from the credentials.")
    chunk_size_mb: int = Field(
        64, ge=1, le=1024, description="Resumable-upload chunk in MiB; larger files upload in chunks of this size."
    )
    max_retries: int = Field(5, ge=0, le=20, description="Retries of one request on transient errors before giving up.")
    retry_backoff_s: float = Field(
        1.0, ge=0.0, description="First retry delay in seconds; doubles per retry, capped at 30 s."
    )
    timeout_s: float = Field(120.0, gt=0.0, description="Timeout of one HTTP request to GCS in seconds.")

    @field_validator("bucket")
    @classmethod
    def _valid_bucket(cls, value: str | None) -> str | None:
        return None if value is None else validate_bucket_name(value)

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @model_validator(mode="after")
    def _bucket_when_enabled(self) -> GCSConfig:
        if self.enabled and self.bucket is None:
            raise ValueError("gcs.enabled=true needs gcs.bucket (e.g. gcs.bucket=my-bucket).")
        return self

    @property
    def chunk_size_bytes(self) -> int:
        """The chunk size in bytes; a whole number of MiB is always a multiple of GCS's 256 KiB rule."""
        return self.chunk_size_mb * 1024 * 1024
