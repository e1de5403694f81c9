"""One writer per output: `output_lock(out)` refuses a second run on the same `out=` while the first lives.

Two runs on one output (a double launch, a Prefect retry of a task whose first try still runs, two
terminals) would interleave files, and a resume's clean-up would delete the temp folders the live
run is writing. So every stage holds a lock on its local output for as long as it writes.

Design choices:
- `flock` on a hidden file beside the folder the stage writes (`.NAME.lock`; for a GGUF, the folder
  holding it, whose stage.json and reports the export writes too): the kernel drops it when the process
  dies, kill -9 included, so a crash never leaves a stale lock to clean up by hand. flock belongs to
  the open file, so a second run inside the same process is refused as well.
- Refuse at once rather than wait: a second run that waited would then redo or resume work the first
  just finished, and the message says which process holds the output (pid, host, start, command).
- The lock file is removed on release. A run that locked a file another run has just unlinked checks
  that the path still names its file and starts over if not, so two runs never both hold a lock.
- Only local rank 0 locks: the other ranks of a distributed run write through rank 0 or into their
  own shards of the same output.
- A gs:// output is locked through the local folder the stage writes before uploading, so the lock
  covers runs on one machine; runs on two machines writing one prefix are not detected, and an output
  inside a bucket mount (a cloud job's) is not locked: the lock file would become an object.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wrinklefree_core.config.redact import redact_text
from wrinklefree_core.uri import StorageError


class OutputBusyError(StorageError):
    """Another live run is writing the same output."""


def lock_path(out: Path) -> Path:
    """The lock file of output folder `out`: `.NAME.lock` beside it."""
    return out.parent / f".{out.name}.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, since {info['started']}: `{info['command']}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


def _acquire(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder unlinked it on release: lock the file now at the path


@contextmanager
def output_lock(out: str | os.PathLike, stage: str, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of output folder `out` while the block runs; OutputBusyError if another run holds it."""
    if not enabled or int(os.environ.get("LOCAL_RANK", "0") or 0) != 0:
        yield
        return
    out = Path(out).expanduser().absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        yield  # a file where a folder should be: the stage's output check refuses it, naming the file
        return
    path = lock_path(out)
    fd = _acquire(path)
    if fd < 0:
        raise OutputBusyError(
            f"out={out} is being written by another run ({_holder(path)}); wait for it to finish, "
            f"or give this {stage} another out="
        )
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": redact_text(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))[:300],
            "stage": stage,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
