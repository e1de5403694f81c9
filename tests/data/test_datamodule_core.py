"""From a data config to a mixture and validation sets, on small local sources."""

from __future__ import annotations

import json

import pytest
import torch

from tests.data.conftest import make_documents
from wrinklefree_core.config.data import DataConfig
from wrinklefree_core.data.datamodule_core import build_datasets
from wrinklefree_core.data.documents import DataSourceError

SEQ_LEN = 32


def write_sources(tmp_path):
    docs = make_documents(20)
    folder = tmp_path / "prose"
    folder.mkdir()
    for i, doc in enumerate(docs[:12]):
        (folder / f"{i:02d}.txt").write_text(doc)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[12:]))
    return folder, records


def test_build_datasets_splits_packs_and_mixes(tokenizer, tmp_path):
    folder, records = write_sources(tmp_path)
    cfg = DataConfig(
        config_name="local",
        sources=[{"name": "prose", "path": str(folder), "weight": 3.0}, {"name": "records", "path": str(records), "weight": 1.0}],
        val_fraction=0.25,
        seed=0,
    )
    mixture, val = build_datasets(cfg, tokenizer, SEQ_LEN)
    assert mixture.names == ("prose", "records") and mixture.seq_len == SEQ_LEN
    assert mixture.weights == pytest.approx({"prose": 0.75, "records": 0.25})
    assert set(val) == {"prose", "records"}
    assert all(v.dtype == torch.long and v.shape[1] == SEQ_LEN and v.shape[0] > 0 for v in val.values())

    # held-out documents never show up in training rows
    def doc_ids(ids) -> set[str]:
        text = tokenizer.decode(ids.reshape(-1).tolist(), skip_special_tokens=False)
        return {line.split(".")[0] for line in text.split(tokenizer.eos_token) if line.startswith("Document ")}

    train_docs = set().union(*(doc_ids(mixture.sample(64)["input_ids"]) for _ in range(4)))
    val_docs = set().union(*(doc_ids(v) for v in val.values()))
    assert val_docs and train_docs and train_docs.isdisjoint(val_docs)

    again, again_val = build_datasets(cfg, tokenizer, SEQ_LEN)  # from the token cache
    assert all(torch.equal(again_val[k], val[k]) for k in val)


def test_too_little_validation_text_is_a_clear_error(tokenizer, tmp_path):
    folder, _ = write_sources(tmp_path)
    cfg = DataConfig(config_name="local", sources=[{"name": "prose", "path": str(folder)}], val_fraction=0.05)
    with pytest.raises(DataSourceError, match="validation documents hold .* fewer than one sequence of 512.*larger data.val_fraction"):
        build_datasets(cfg, tokenizer, 512)
