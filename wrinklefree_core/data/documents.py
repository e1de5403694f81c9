"""Read one configured text source into documents (plain strings).

A source spec is one of:
- `package:<corpus>`: a corpus shipped by a package (see `corpora.py`); one document per file.
- a local file: `.txt` / `.md` / `.rst` (text), `.jsonl` (field "text" per line), `.parquet` (column "text").
- a local folder: every file with those extensions below it, recursively, sorted by relative path;
  hidden files and folders (`.git`, ...) are skipped.
- a Hugging Face dataset id (`owner/name`): `datasets.load_dataset(id, split="train")`, column "text".

Design choices:
- A document is the unit of the held-out split and of position resets when packing, so files keep
  their natural boundaries: one document per text file, one per record of a jsonl/parquet file.
- A single text file given on its own is usually a whole corpus in one file (tiny-shakespeare style),
  which would leave nothing to split. Such a file, when larger than `SINGLE_FILE_CHUNK_CHARS`, is cut
  at blank lines into chunks of at least that many characters. The cut is lossless: joining the
  chunks gives back the file. Files inside folders and package corpora are never cut.
- Empty and whitespace-only documents (e.g. an empty `__init__.py`) are skipped; a source that yields
  no document at all is an error.
- jsonl and parquet are read with `datasets` in streaming mode: rows are read straight from the file,
  nothing is converted into the datasets cache.
- Hub datasets are loaded without streaming: the split and the token cache need every document anyway,
  and a downloaded dataset has a fingerprint that keys the token cache. Without network the load fails
  and the error says to pass a local path instead.
- `Source.fingerprint()` depends only on file paths, sizes and modification times (plus the reader
  settings), so a cache lookup costs a few `stat` calls, never a read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wrinklefree_core.data.corpora import CorpusError, corpus_files

TEXT_SUFFIXES = (".txt", ".md", ".rst")
RECORD_SUFFIXES = (".jsonl", ".parquet")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES
TEXT_FIELD = "text"
SINGLE_FILE_CHUNK_CHARS = 100_000
# Part of every fingerprint: bump when the way files become documents changes.
READER_VERSION = "1"

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


SourceKind = Literal["package", "file", "folder", "hub"]


class DataSourceError(ValueError):
    """A configured data source cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class Source:
    """A resolved source spec: what kind it is and which files (or which hub dataset) it reads."""

    spec: str
    kind: SourceKind
    files: tuple[Path, ...] = ()
    dataset: Any = field(default=None, compare=False, repr=False)

    def fingerprint(self) -> str:
        """A digest that changes whenever the documents of this source may have changed."""
        if self.kind == "hub":
            parts: list[Any] = [self.spec, getattr(self.dataset, "_fingerprint", None)]
        else:
            parts = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in self.files]
        payload = json.dumps({"reader": READER_VERSION, "kind": self.kind, "chunk": SINGLE_FILE_CHUNK_CHARS, "parts": parts})
        return hashlib.sha256(payload.encode()).hexdigest()

    def documents(self) -> Iterator[str]:
        """Yield the non-empty documents of this source, in a fixed order."""
        if self.kind == "hub":
            yield from _non_empty(self.dataset[TEXT_FIELD])
            return
        for path in self.files:
            suffix = path.suffix.lower()
            if self.kind == "file" and suffix in TEXT_SUFFIXES:
                yield from _non_empty(split_text(_read_text(path), SINGLE_FILE_CHUNK_CHARS))
            elif self.kind == "package" or suffix in TEXT_SUFFIXES:
                yield from _non_empty([_read_text(path)])
            else:
                yield from _non_empty(_records(path))


def resolve_source(spec: str) -> Source:
    """Work out what `spec` names and check that it exists; hub datasets are loaded here."""
    if spec.startswith("package:"):
        try:
            files = tuple(corpus_files(spec.removeprefix("package:")))
        except CorpusError as exc:
            raise DataSourceError(str(exc)) from exc
        if not files:
            raise DataSourceError(f"package corpus '{spec}' has no files")
        return Source(spec, "package", files)

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataSourceError(f"{path}: unsupported file type '{path.suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}")
        return Source(spec, "file", (path.resolve(),))
    if path.is_dir():
        files = tuple(sorted(_folder_files(path.resolve())))
        if not files:
            raise DataSourceError(f"folder {path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return Source(spec, "folder", files)
    if _looks_local(spec):
        raise DataSourceError(f"data source {spec} does not exist (neither a file nor a folder)")
    return Source(spec, "hub", (), _load_hub_dataset(spec))


def iter_documents(spec: str | Source) -> Iterator[str]:
    """Yield the documents of a source spec; raises DataSourceError if there is none."""
    source = spec if isinstance(spec, Source) else resolve_source(spec)
    count = 0
    for doc in source.documents():
        count += 1
        yield doc
    if count == 0:
        raise DataSourceError(f"data source {source.spec} holds no non-empty document")


def read_documents(spec: str | Source) -> list[str]:
    """All documents of a source spec as a list."""
    return list(iter_documents(spec))


def split_text(text: str, chunk_chars: int) -> list[str]:
    """Cut `text` at blank lines into chunks of at least `chunk_chars` characters (the last may be shorter).

    Lossless: `"".join(split_text(t, n)) == t`. A text without a blank line after `chunk_chars`
    characters stays one chunk.
    """
    chunks: list[str] = []
    start = 0
    for m in _BLANK_LINE.finditer(text):
        if m.end() - start >= chunk_chars:
            chunks.append(text[start : m.end()])
            start = m.end()
    if start < len(text):
        chunks.append(text[start:])
    return chunks


def _non_empty(texts) -> Iterator[str]:
    for text in texts:
        if text is not None and text.strip():
            yield text


def _read_text(path: Path) -> str:
    # Corpora are mostly UTF-8; a stray byte should not stop a training run, but a binary file
    # (NUL bytes, or more than 1% of it not UTF-8) named .txt is not text to train on.
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    has_nul = b"\x00" in data
    if has_nul or bad > max(8, len(text) // 100):
        why = "it has NUL bytes" if has_nul else f"{bad} of its bytes are not UTF-8"
        raise DataSourceError(f"{path} does not look like text ({why}); remove it from the data source, or convert it to UTF-8 text")
    return text


def _folder_files(root: Path) -> Iterator[Path]:
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not any(part.startswith(".") for part in rel.parts):
            yield p


def _looks_local(spec: str) -> bool:
    """Whether a spec that does not exist was meant as a local path rather than a hub id."""
    return spec.startswith(("/", ".", "~")) or Path(spec).suffix.lower() in SUPPORTED_SUFFIXES or not _HUB_ID.match(spec)


def _records(path: Path) -> Iterator[str | None]:
    """The "text" values of a jsonl or parquet file, read in streaming mode."""
    import datasets

    builder = "json" if path.suffix.lower() == ".jsonl" else "parquet"
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
        for row in rows:
            if TEXT_FIELD not in row:
                raise DataSourceError(f"{path}: records have no '{TEXT_FIELD}' field (fields: {', '.join(row)})")
            yield row[TEXT_FIELD]
    except DataSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise DataSourceError(f"{path}: cannot read as {builder} ({type(exc).__name__}: {exc})") from exc


def _load_hub_dataset(spec: str):
    import datasets

    try:
        ds = datasets.load_dataset(spec, split="train")
    except Exception as exc:  # noqa: BLE001 - offline, unknown id and gated repos all need the same advice
        raise DataSourceError(
            f"'{spec}' is not a local file or folder, and loading it as a Hugging Face Hub dataset failed "
            f"(the hub may be unreachable: {type(exc).__name__}: {str(exc)[:200]}). Download it where the hub "
            f"is reachable and pass a local path instead (a .jsonl/.parquet/.txt file or a folder of them), "
            f"or use a package: corpus."
        ) from exc
    if TEXT_FIELD not in ds.column_names:
        raise DataSourceError(f"dataset '{spec}' has no '{TEXT_FIELD}' column (columns: {', '.join(ds.column_names)})")
    return ds
