"""Reading sources into documents: local files of each kind, folders, package corpora, hub ids, errors."""

from __future__ import annotations

import json
import os

import pytest

from wrinklefree_core.data import documents as documents_mod
from wrinklefree_core.data.corpora import PYTHON_DOCS_DIR
from wrinklefree_core.data.documents import (
    SINGLE_FILE_CHUNK_CHARS,
    DataSourceError,
    read_documents,
    resolve_source,
    split_text,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_parquet(path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)


def test_small_text_and_markdown_files_are_one_document_each(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\n\nSecond paragraph.\n")
    (tmp_path / "b.md").write_text("# Title\n\nBody.\n")
    assert read_documents(str(tmp_path / "a.txt")) == ["First paragraph.\n\nSecond paragraph.\n"]
    assert read_documents(str(tmp_path / "b.md")) == ["# Title\n\nBody.\n"]


def test_large_single_text_file_is_cut_losslessly_at_blank_lines(tmp_path):
    paragraph = "word " * 2000 + "\n\n"  # ~10k chars
    text = paragraph * 35
    (tmp_path / "big.txt").write_text(text)
    docs = read_documents(str(tmp_path / "big.txt"))
    assert len(docs) == 4  # 350k chars in chunks of >= 100k
    assert "".join(docs) == text
    assert all(len(d) >= SINGLE_FILE_CHUNK_CHARS for d in docs[:-1])
    assert split_text("no blank line here", 3) == ["no blank line here"]


def test_jsonl_and_parquet_give_one_document_per_record(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha", "meta": 1}, {"text": "beta", "meta": 2}, {"text": "  ", "meta": 3}])
    write_parquet(tmp_path / "d.parquet", ["gamma", "delta", "epsilon"])
    assert read_documents(str(tmp_path / "d.jsonl")) == ["alpha", "beta"]  # whitespace-only record skipped
    assert read_documents(str(tmp_path / "d.parquet")) == ["gamma", "delta", "epsilon"]


def test_jsonl_without_text_field_is_an_error(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"body": "alpha"}])
    with pytest.raises(DataSourceError, match="no 'text' field"):
        read_documents(str(tmp_path / "d.jsonl"))


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden_and_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b.txt").write_text("b text")
    (tmp_path / "a.md").write_text("a text")
    (tmp_path / "sub" / "c.txt").write_text("c text")
    write_jsonl(tmp_path / "sub" / "d.jsonl", [{"text": "d1"}, {"text": "d2"}])
    (tmp_path / "sub" / "empty.txt").write_text("\n\n")
    (tmp_path / ".git" / "x.txt").write_text("hidden")
    (tmp_path / "notes.csv").write_text("ignored")
    source = resolve_source(str(tmp_path))
    assert source.kind == "folder"
    assert read_documents(source) == ["a text", "b text", "c text", "d1", "d2"]


def test_package_shakespeare_is_one_document_per_play():
    docs = read_documents("package:shakespeare")
    assert len(docs) == 38
    assert any(d.startswith("# A Midsummer Night's Dream") for d in docs)


def test_package_python_stdlib_is_one_document_per_module():
    source = resolve_source("package:python_stdlib")
    docs = read_documents(source)
    assert len(docs) > 100 and len(docs) <= len(source.files)  # empty modules are skipped
    assert any("def " in d for d in docs)


@pytest.mark.skipif(not PYTHON_DOCS_DIR.is_dir(), reason="Debian python3.11-doc is not installed")
def test_package_python_docs():
    docs = read_documents("package:python_docs")
    assert len(docs) > 100


def test_package_licenses_is_one_document_per_licence_without_aliases():
    docs = read_documents("package:licenses")
    # GPL -> GPL-3 style aliases are symlinks: each text appears once.
    assert len(docs) == len(set(docs)) >= 10
    assert sum("GNU GENERAL PUBLIC LICENSE" in d for d in docs) == 3  # GPL-1, GPL-2, GPL-3


def test_hub_id_without_network_says_to_pass_a_local_path():
    with pytest.raises(DataSourceError, match="local path"):
        resolve_source("wrinklefree-tests/no-such-dataset")


def test_hub_dataset_documents_and_fingerprint(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["one", "", "two"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: ds)
    source = resolve_source("someone/corpus")
    assert source.kind == "hub"
    assert read_documents(source) == ["one", "two"]
    assert source.fingerprint() == resolve_source("someone/corpus").fingerprint()


def test_missing_path_unknown_extension_and_empty_sources_are_errors(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "nope.txt"))
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_source("./relative/missing")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataSourceError, match="unsupported file type '.csv'"):
        resolve_source(str(tmp_path / "data.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="holds no"):
        resolve_source(str(tmp_path / "empty"))
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(DataSourceError, match="no non-empty document"):
        read_documents(str(tmp_path / "blank.txt"))
    with pytest.raises(DataSourceError, match="unknown corpus"):
        resolve_source("package:nope")


def test_fingerprint_follows_size_and_mtime(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    before = resolve_source(str(path)).fingerprint()
    assert resolve_source(str(path)).fingerprint() == before
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert resolve_source(str(path)).fingerprint() != before
    assert documents_mod.READER_VERSION  # part of every fingerprint


@pytest.mark.parametrize("content", [b"\x00\x01binary\x00" * 100, bytes(range(128, 256)) * 40], ids=["NUL bytes", "not UTF-8"])
def test_a_binary_file_named_txt_is_refused(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match="does not look like text"):
        read_documents(str(path))


def test_a_stray_byte_in_real_text_is_kept_as_a_replacement_character(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(("A line of ordinary text. " * 100).encode() + b"\xff" + b" and the rest.")
    (document,) = read_documents(str(path))
    assert "\ufffd" in document and document.endswith(" and the rest.")
