"""Publish a local folder atomically: write it under a hidden temporary sibling, then rename it into place.

    with atomic_folder(out) as tmp:
        ...write every file into tmp...
    # `out` now holds the complete new folder; after an exception, whatever it held before

Design choices:
- The temp folder `.{name}.tmp-<pid>` sits beside the target, so the final rename stays on one
  filesystem and is atomic. A leftover of an earlier crash with the same pid is cleared first.
- Files and folders are fsynced before the rename and the parent after it, so after a power loss
  the name points at complete data, not at files the kernel had not written yet.
- mode="replace": POSIX cannot swap two non-empty folders in one step, so an existing target is
  renamed aside to `.{name}.old-<pid>`, the new folder renamed in, and only then the old one deleted.
  A crash between the two renames leaves a complete folder under one of the two names, never
  neither; the next atomic_folder on that target (or recover_folder) renames it back first.
- mode="first_wins": for caches that several processes may fill at once. If a complete target
  appeared while ours was being written, ours is discarded and theirs kept; nothing is moved aside.
- An exception inside the block deletes the temp folder and never touches the target. Whether a
  target may be replaced at all (a foreign folder, say) is the caller's check, made before entering.
- Temp folders of other process ids are only deleted in replace mode and only when that pid is not
  running on this host: a live writer's half-written folder must survive.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

Mode = Literal["replace", "first_wins"]


def _sibling(final: Path, kind: str, pid: int | None = None) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid() if pid is None else pid}"


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file inside it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write one small file (a JSON record) so that readers see the old content or the new, never half.

    The text goes to `.{name}.tmp-<pid>` beside `path`, is fsynced, and replaces `path` in one rename;
    on any error the temp file is removed and `path` is untouched.
    """
    final = Path(path)
    tmp = _sibling(final, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves (their entries name the files)."""
    dirs = [folder]
    for path in sorted(Path(folder).rglob("*")):
        if path.is_dir():
            dirs.append(path)
        elif path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        fsync_dir(d)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def recover_folder(final: str | os.PathLike) -> None:
    """Undo what a crashed replace left beside `final`.

    If `final` is missing, the newest moved-aside copy (a complete, previously published folder) is
    renamed back. Moved-aside copies no longer needed, and temp folders of processes that are not
    running, are deleted.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)")
    olds, dead_tmps = [], []
    for path in final.parent.iterdir():
        m = pattern.fullmatch(path.name)
        if m is None:
            continue
        if m.group(1) == "old":
            olds.append(path)
        elif int(m.group(2)) != os.getpid() and not _pid_running(int(m.group(2))):
            dead_tmps.append(path)  # this process's own temp folder is atomic_folder's to clear
    olds.sort(key=lambda p: p.stat().st_mtime)
    if olds and not final.exists():
        os.rename(olds.pop(), final)
        fsync_dir(final.parent)
    for path in olds + dead_tmps:
        shutil.rmtree(path, ignore_errors=True)


_FILE_LEFTOVER = re.compile(r"\.?.+\.(tmp|unverified)-(\d+)")
STALE_AFTER_S = 600  # a live writer on another machine (a bucket mount) has no pid here; its file is this fresh


def remove_dead_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files (`NAME.tmp-PID`, `.NAME.unverified-PID`) that crashed writers left in `folder`.

    Only files whose process is not running on this machine and that nobody touched for
    STALE_AFTER_S; returns what was deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for path in folder.iterdir():
        m = _FILE_LEFTOVER.fullmatch(path.name)
        if m is None or not path.is_file():
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _pid_running(pid) or now - path.stat().st_mtime < STALE_AFTER_S:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        fsync_dir(final.parent)
        return
    old = _sibling(final, "old")
    if old.exists():
        shutil.rmtree(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _publish_first(tmp: Path, final: Path, complete: Callable[[Path], bool]) -> None:
    try:
        os.rename(tmp, final)  # replaces an empty folder; fails on a non-empty one
    except OSError:
        if not complete(final):
            raise
        return  # another writer published first; the caller's finally discards ours
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_folder(
    final: str | os.PathLike,
    *,
    mode: Mode = "replace",
    complete: Callable[[Path], bool] = Path.is_dir,
) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; when the block succeeds, publish it as `final`.

    mode="replace" swaps out an existing `final` only after the new folder is in place (see the
    module docstring for the crash guarantees). mode="first_wins" keeps an existing `final` that
    `complete(final)` accepts and discards the new folder; an existing folder it does not accept
    makes the publish fail with the rename's OSError. On an exception inside the block the temp
    folder is deleted and `final` is left as it was.
    """
    if mode not in ("replace", "first_wins"):
        raise ValueError(f"atomic_folder mode must be 'replace' or 'first_wins', not {mode!r}")
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if mode == "replace":
        recover_folder(final)
    tmp = _sibling(final, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if mode == "replace":
            _swap_into_place(tmp, final)
        else:
            _publish_first(tmp, final, complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to delete once the rename succeeded
