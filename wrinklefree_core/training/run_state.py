"""Where a training run keeps its resumable state, and how a checkpoint is published atomically.

Layout for `out=OUT` (OUT itself is the final BitNet checkpoint folder, so the next stage's `model=`
or `checkpoint=` takes it directly):

    OUT.state/
      checkpoints/
        last/                  the newest complete resumable checkpoint
          model/               a BitNet checkpoint folder (save_bitnet_checkpoint)
          trainer_state.pt     Lightning's trainer state minus the weights: optimizer, LR scheduler,
                               loop counters (global step), callback states, the data mixture
                               position, lambda warmup, ZClip, DLM mask generator, RNG states
          run.json             step, resolved config, input artifacts, MLflow run id, batch size

Design choices:
- The state lives beside OUT, not inside it: save_bitnet_checkpoint replaces OUT as a whole when
  the run finishes, which would delete anything inside it, and a checkpoint folder should hold
  only the model. It is a visible sibling on purpose: it holds optimizer state (about twice the
  model) and should be easy to find and delete once the run will not be continued.
- Publishing: a checkpoint is written into `checkpoints/.last.tmp-<step>` and fsynced; then
  `last` is renamed to `.last.old-<step>`, the temp folder renamed to `last`, and the old one
  deleted. A reader therefore only ever sees a complete `last`. A crash between the two renames
  leaves no `last` but a complete `.last.old-*`, which `recover()` renames back before a resume;
  temp folders of a killed writer are deleted by `recover()` too.
- trainer_state.pt is loaded with `weights_only=True` (tensors and Python literals only): a pickle
  can run code while it loads, and with a gs:// output `pull()` fetches this file from a bucket
  that others may write to. `check_trainer_state` refuses, before anything is built, a file whose
  pickle names any other global (and a damaged one), saying how to start over.
- run.json is small and read before anything heavy is built, so a resume can check that the
  config still matches and reuse the inputs (teacher, source model) and the MLflow run.
- With a gs:// output the state is mirrored to `gs://.../OUT.state/checkpoints/step-N/` (storage/
  checkpoints.py): every published `last` is uploaded right after the local rename (marker last,
  older steps deleted afterwards), and `pull()` puts the bucket's newest complete checkpoint in
  place of an older or missing local one before a resume. A failed upload is reported and training
  goes on: the local checkpoint is intact, and the next checkpoint (or the final publish) retries.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint
from wrinklefree_core.storage.atomic import fsync_dir, fsync_tree
from wrinklefree_core.training.errors import ResumeError

if TYPE_CHECKING:
    from wrinklefree_core.storage.checkpoints import RemoteCheckpoints

log = logging.getLogger(__name__)

MODEL_DIR = "model"
TRAINER_STATE = "trainer_state.pt"
RUN_META = "run.json"
_TMP_PREFIX = ".last.tmp-"
_OLD_PREFIX = ".last.old-"


def state_root(out: Path) -> Path:
    """The resumable-state folder of a run writing its final checkpoint to `out`."""
    return out.parent / f"{out.name}.state"


class RunState:
    """The `OUT.state/checkpoints` folder of one run, optionally mirrored to a bucket (`remote`)."""

    def __init__(self, out: Path, remote: RemoteCheckpoints | None = None):
        self.root = state_root(out)
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last"
        self.remote = remote
        self.on_upload_error: Callable[[Exception], None] = lambda exc: log.warning(
            "could not upload the checkpoint to the bucket, training goes on (%s)", exc
        )

    # ------------------------------------------------------------------------------------------ read

    def has_checkpoint(self) -> bool:
        """True when `last` holds a complete checkpoint (model folder, trainer state and run.json)."""
        return (
            (self.last / TRAINER_STATE).is_file()
            and (self.last / RUN_META).is_file()
            and is_bitnet_checkpoint(self.last / MODEL_DIR)
        )

    def read_meta(self) -> dict[str, Any]:
        """run.json of the last checkpoint (ResumeError when it is not a readable JSON object)."""
        path = self.last / RUN_META
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResumeError(f"{path} is not readable ({exc}); {START_OVER}") from exc
        if not isinstance(meta, dict) or "config" not in meta:
            raise ResumeError(f"{path} is not a checkpoint's run.json (no `config`); {START_OVER}")
        return meta

    def leftovers(self) -> list[Path]:
        """Temp or moved-aside checkpoint folders (only present after a crash, until recover())."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if p.name.startswith((_TMP_PREFIX, _OLD_PREFIX)))

    # ----------------------------------------------------------------------------------------- write

    def recover(self) -> None:
        """Restore `last` if a crash hit between the two renames of publish(); delete temp folders."""
        if not self.checkpoints.is_dir():
            return
        olds = sorted(self.checkpoints.glob(f"{_OLD_PREFIX}*"), key=lambda p: p.stat().st_mtime)
        if not self.last.exists() and olds:
            os.rename(olds[-1], self.last)
        for path in self.leftovers():
            shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> None:
        """Delete the whole state folder, and its mirror (training.resume=never starts from scratch)."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self.remote is not None:
            self.remote.clear()

    def pull(self) -> int | None:
        """Make the bucket's newest complete checkpoint `last` when it is newer than the local one.

        Returns its step, or None when the local state is as new (or there is no mirror/checkpoint).
        Marker-less step folders in the bucket are never considered. An unreachable bucket is an
        error only when there is no local checkpoint to continue from.
        """
        if self.remote is None:
            return None
        from wrinklefree_core.storage.retry import BucketUnreachableError

        self.recover()
        try:
            latest = self.remote.latest()
        except BucketUnreachableError:
            if not self.has_checkpoint():
                raise  # nothing here to go on from, and the bucket may hold the run's progress
            log.warning("could not reach the bucket; resuming from the local checkpoint %s", self.last)
            return None
        local_step = self.read_meta()["step"] if self.has_checkpoint() else -1
        if latest is None or latest[0] <= local_step:
            return None
        step = latest[0]
        tmp = self.temp_dir(step)
        tmp.rmdir()  # the download creates it, atomically
        self.remote.download(step, tmp)
        self.publish(tmp, step, upload=False)
        return step

    def temp_path(self, step: int) -> Path:
        """Where the checkpoint of `step` is assembled (the same name on every rank)."""
        return self.checkpoints / f"{_TMP_PREFIX}{step}"

    def temp_dir(self, step: int) -> Path:
        """A fresh, empty `temp_path(step)`."""
        tmp = self.temp_path(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, tmp: Path, step: int, upload: bool = True) -> Path:
        """Make the complete checkpoint in `tmp` the new `last`; the previous one goes only afterwards.

        With a mirror, `last` is then uploaded (unless `upload` is False: it came from the bucket).
        """
        fsync_tree(tmp)
        old = self.checkpoints / f"{_OLD_PREFIX}{step}"
        if old.exists():
            shutil.rmtree(old)
        if self.last.exists():
            os.rename(self.last, old)
        os.rename(tmp, self.last)
        fsync_dir(self.checkpoints)
        shutil.rmtree(old, ignore_errors=True)
        if upload and self.remote is not None:
            self._upload(step)
        return self.last

    def _upload(self, step: int) -> None:
        from wrinklefree_core.uri import StorageError

        started = time.monotonic()
        try:
            uri = self.remote.upload(self.last, step)
        except StorageError as exc:
            self.on_upload_error(exc)
            return
        log.info("uploaded the checkpoint of step %d to %s in %.1fs", step, uri, time.monotonic() - started)


START_OVER = "pass training.resume=never to start over (deletes the resumable state), or choose another out="


def check_trainer_state(path: Path) -> None:
    """Refuse a trainer state that a `weights_only` load cannot read safely (see the module docstring)."""
    import pickle
    import zipfile

    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ResumeError(f"{path} is not a readable training state ({type(exc).__name__}: {exc}); {START_OVER}") from exc
    if unsafe:
        raise ResumeError(
            f"{path} holds pickled Python objects ({', '.join(sorted(unsafe)[:5])}) that loading would have to build, "
            f"which can run code; only tensors and plain values are read. It was written by an older version or by "
            f"someone else: {START_OVER}"
        )


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write run.json into a checkpoint folder being assembled."""
    (folder / RUN_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
