"""Tokenizing with EOS, packing into fixed rows, position ids, and the on-disk token cache."""

from __future__ import annotations

import numpy as np
import torch

from tests.data.conftest import make_documents
from wrinklefree_core.data import packing
from wrinklefree_core.data.packing import load_tokens, pack_documents, position_ids_from_eos, tokenize_documents

SEQ_LEN = 32


def decode(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_every_document_ends_with_exactly_one_eos(tokenizer):
    docs = make_documents(5) + ["a literal <|endoftext|> inside a document"]
    tokenized = tokenize_documents(docs, tokenizer, batch_size=4)
    eos = tokenizer.eos_token_id
    assert tokenized.n_documents == len(docs)
    assert tokenized.tokens.dtype == np.uint16
    assert all(tokenized.document(i)[-1] == eos for i in range(len(docs)))
    # the literal special-token text is tokenized as plain text, so EOS marks only real document ends
    assert int((tokenized.tokens == eos).sum()) == len(docs)
    assert [decode(tokenizer, tokenized.document(i)[:-1]) for i in range(len(docs))] == docs


def test_packed_rows_have_seq_len_tokens_and_decode_to_the_documents(tokenizer):
    docs = make_documents(6)
    tokenized = tokenize_documents(docs, tokenizer)
    rows = pack_documents(tokenized, range(len(docs)), SEQ_LEN)
    assert rows.ndim == 2 and rows.shape[1] == SEQ_LEN
    assert rows.shape[0] == len(tokenized.tokens) // SEQ_LEN
    text = decode(tokenizer, rows.reshape(-1))
    pieces = text.split(tokenizer.eos_token)
    # all complete documents come back exactly; the dropped tail only shortens the last one
    assert pieces[:-1] == docs[: len(pieces) - 1]
    assert docs[len(pieces) - 1].startswith(pieces[-1])


def test_packing_a_subset_keeps_only_those_documents(tokenizer):
    docs = make_documents(6)
    tokenized = tokenize_documents(docs, tokenizer)
    rows = pack_documents(tokenized, [1, 4], SEQ_LEN)
    text = decode(tokenizer, rows.reshape(-1))
    assert text.startswith(docs[1] + tokenizer.eos_token) and "Document 4." in text
    assert "Document 0." not in text and "Document 2." not in text
    assert pack_documents(tokenized, [], SEQ_LEN).shape == (0, SEQ_LEN)


def test_position_ids_restart_at_row_start_and_after_each_eos(tokenizer):
    tokenized = tokenize_documents(make_documents(6, sentences=1), tokenizer)
    rows = torch.from_numpy(pack_documents(tokenized, range(6), SEQ_LEN).astype(np.int64))
    eos = tokenizer.eos_token_id
    pos = position_ids_from_eos(rows, eos)
    assert pos.shape == rows.shape and (pos[:, 0] == 0).all()
    after_eos = rows[:, :-1] == eos
    assert (pos[:, 1:][after_eos] == 0).all()
    assert (pos[:, 1:][~after_eos] == pos[:, :-1][~after_eos] + 1).all()
    assert after_eos.any()  # short documents: several boundaries per row
    assert torch.equal(position_ids_from_eos(rows[0], eos), pos[0])


def test_transformers_reads_document_boundaries_from_the_position_ids(tokenizer):
    from transformers.masking_utils import find_packed_sequence_indices

    tokenized = tokenize_documents(make_documents(6, sentences=1), tokenizer)
    rows = torch.from_numpy(pack_documents(tokenized, range(6), SEQ_LEN).astype(np.int64))
    segments = find_packed_sequence_indices(position_ids_from_eos(rows, tokenizer.eos_token_id))
    # segment index = number of EOS strictly before each position
    eos_before = (rows[:, :-1] == tokenizer.eos_token_id).long().cumsum(-1)
    before = torch.cat([torch.zeros(rows.shape[0], 1, dtype=torch.long), eos_before], dim=1)
    assert torch.equal(segments, before)


def test_token_cache_hits_on_second_call_and_misses_after_a_change(tokenizer, tmp_path, isolated_cache, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, doc in enumerate(make_documents(4)):
        (folder / f"{i}.txt").write_text(doc)
    first = load_tokens(str(folder), tokenizer)
    assert not first.from_cache
    assert len(list((isolated_cache / "tokens").iterdir())) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize")

    with monkeypatch.context() as m:
        m.setattr(packing, "tokenize_documents", no_tokenizing)
        second = load_tokens(str(folder), tokenizer)
    assert second.from_cache
    assert np.array_equal(first.tokens, second.tokens) and np.array_equal(first.offsets, second.offsets)

    (folder / "2.txt").write_text("A changed document.\n")
    third = load_tokens(str(folder), tokenizer)
    assert not third.from_cache
    assert third.n_documents == 4 and not np.array_equal(third.tokens, first.tokens)
    assert len(list((isolated_cache / "tokens").iterdir())) == 2  # no temp folders left behind
