"""llama.cpp's own log: kept out of the terminal, written to a file that a failure can point at.

llama.cpp logs through one process-wide callback (ggml and libllama share it). Left alone it prints
hundreds of lines per load (one per LoRA tensor that cannot use a repacked buffer, the whole model
metadata), which buries a run's own output. This module installs a callback once, on first use, that
sends every line to the current sink instead:

- inside `llamacpp_log_to(path)`, appended to that file (the export's `llama_cpp.log`);
- always, into a bounded in-memory tail (`mark` / `lines_since`), so a caller can look for what llama.cpp said
  during one load (e.g. whether weights went to a CPU_REPACK buffer) without parsing a file.

Design choices:
- The callback object is kept at module level: ctypes would free it otherwise, and llama.cpp would
  call freed memory.
- The sink file stays open for the block (a load logs thousands of lines); a continuation (level 5)
  is appended as is.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

_TAIL_LINES = 4000
_lock = threading.Lock()
_tail: deque[str] = deque(maxlen=_TAIL_LINES)
_total = 0  # lines logged so far in this process; positions for lines_since
_sinks: list = []  # open text files, innermost last
_callback = None


def _on_log(level: int, text: bytes, user_data) -> None:
    global _total
    line = text.decode("utf-8", errors="replace") if text else ""
    with _lock:
        _tail.append(line)
        _total += 1
        if _sinks:
            _sinks[-1].write(line)


def install() -> None:
    """Route llama.cpp's log to this module's sinks (idempotent; call before loading a model)."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def mark() -> int:
    """A position in the log: `lines_since(mark())` returns what llama.cpp logs after this call."""
    with _lock:
        return _total


def lines_since(position: int) -> list[str]:
    """The log lines since `position` (from `mark`), as far back as the bounded tail reaches."""
    with _lock:
        n = min(_total - position, len(_tail))
        return list(_tail)[len(_tail) - n :] if n > 0 else []


@contextlib.contextmanager
def llamacpp_log_to(path: str | Path | None) -> Iterator[Path | None]:
    """Within the block, llama.cpp's log lines are appended to `path` (None: the in-memory tail only)."""
    install()
    if path is None:
        yield None
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        with _lock:
            _sinks.append(f)
        try:
            yield p
        finally:
            with _lock:
                _sinks.remove(f)
