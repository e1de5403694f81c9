"""Resumable training checkpoints on GCS: one `step-NNNNNNNNN/` folder per upload, only the newest kept.

    gs://bucket/runs/train.state/checkpoints/
      step-000000040/   a complete checkpoint folder with its _COMPLETE marker (manifest.py)

Design choices:
- Each upload goes to a new prefix named by its step, and older ones are deleted only once the new
  marker is written: at every moment the bucket holds at least one complete checkpoint (after the
  first), whereas rewriting one fixed prefix would leave none while an upload is in flight.
- A step folder without its marker is an upload that died (or is still running) and is never
  offered for resuming; the next successful upload deletes it.
- The bucket keeps what the local rotation keeps (the newest checkpoint); the local folder layout
  is the trainer's business (training/run_state.py), this module only moves whole folders.
- Downloads go through a private cache under the destination's parent that is deleted afterwards:
  a checkpoint is read once, and a copy of the optimizer state in the shared cache would only
  take disk space.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.storage.gcs import GCSStore
from wrinklefree_core.storage.manifest import MARKER_NAME
from wrinklefree_core.uri import GCSURI, parse_uri

_STEP_RE = re.compile(r"step-(\d{9})")


class RemoteCheckpoints:
    """The step-versioned checkpoint folders under one gs:// prefix."""

    def __init__(self, uri: str | GCSURI, config: GCSConfig | None = None, store: GCSStore | None = None):
        self.uri = uri if isinstance(uri, GCSURI) else parse_uri(uri)
        self.store = store or GCSStore(config)

    def step_uri(self, step: int) -> GCSURI:
        """Where the checkpoint of `step` is uploaded."""
        return self.uri.child(f"step-{step:09d}")

    def steps(self) -> dict[int, bool]:
        """{step: has its completion marker} for every step folder under the prefix."""
        found: dict[int, bool] = {}
        for info in self.store.list_prefix(self.uri):
            head, _, rest = info.path.partition("/")
            match = _STEP_RE.fullmatch(head)
            if match:
                step = int(match.group(1))
                found[step] = found.get(step, False) or rest == MARKER_NAME
        return found

    def latest(self) -> tuple[int, GCSURI] | None:
        """(step, URI) of the newest complete checkpoint, or None when there is none."""
        complete = [step for step, done in self.steps().items() if done]
        return (max(complete), self.step_uri(max(complete))) if complete else None

    def upload(self, folder: Path, step: int) -> GCSURI:
        """Upload `folder` as the checkpoint of `step` (marker last), then delete every other step folder."""
        target = self.store.upload_folder(folder, self.step_uri(step))
        for other in self.steps():
            if other != step:
                self.store.delete_prefix(self.step_uri(other))
        return target

    def download(self, step: int, dest: Path) -> Path:
        """Copy the complete checkpoint of `step` into `dest` (absent or empty), verified; returns `dest`."""
        cache_root = dest.parent / f".download-{uuid.uuid4().hex[:8]}"
        try:
            return self.store.download_folder(self.step_uri(step), dest, cache_root=cache_root)
        finally:
            shutil.rmtree(cache_root, ignore_errors=True)

    def clear(self) -> None:
        """Delete every checkpoint under the prefix (a run that starts over)."""
        for step in self.steps():
            self.store.delete_prefix(self.step_uri(step))
