"""llama.cpp tokenizes exactly like the checkpoint's HF tokenizer, from the GGUF metadata alone.

The checks run on vocab-only GGUFs (tokenizer keys, no tensors; llama.cpp's `vocab_only` mode), so
even the 49k-token SmolLM2 vocabulary takes about a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import llama_cpp
import pytest
from gguf import GGUFWriter
from transformers import AutoConfig, AutoTokenizer

from tests.export.conftest import SAMPLE_TEXT, source_folder
from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export import ExportError, detect_pre_tokenizer, read_vocab
from wrinklefree_core.export.gguf_tokenizer import write_vocab

TEXTS = [SAMPLE_TEXT, ExportConfig().verify_prompt, "a  1", "x 12  345\n 6\n\n\nend", "<|endoftext|>after special"]


def vocab_gguf(folder: Path, path: Path):
    """Write a GGUF holding only the tokenizer of `folder`; return the GGUFVocab written."""
    config = AutoConfig.from_pretrained(folder)
    vocab = read_vocab(folder, config, config.vocab_size)
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    write_vocab(w, vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return vocab


def assert_llama_cpp_matches_hf(folder: Path, tmp_path: Path, expected_pre: str) -> None:
    vocab = vocab_gguf(folder, tmp_path / "vocab.gguf")
    assert vocab.pre == expected_pre
    tok = AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp.Llama(str(tmp_path / "vocab.gguf"), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            ids = llm.tokenize(text.encode(), add_bos=True, special=True)
            assert ids == tok(text).input_ids, text
            plain = [i for i in ids if vocab.token_types[i] != 3]  # drop control tokens before decoding
            expected = text.replace("<|endoftext|>", "") if "<|endoftext|>" in vocab.tokens else text
            assert llm.detokenize(plain).decode() == expected
    finally:
        llm.close()


def with_pre_tokenizer(src: Path, dst: Path, pre_tokenizer: dict) -> Path:
    """Copy a tokenizer folder (config + tokenizer files) with its pre_tokenizer replaced."""
    dst.mkdir()
    for name in ("config.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = pre_tokenizer
    (dst / "tokenizer.json").write_text(json.dumps(tj))
    return dst


QWEN2_PRE = {
    "type": "Sequence",
    "pretokenizers": [
        {
            "type": "Split",
            "pattern": {
                "Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
            },
            "behavior": "Isolated",
            "invert": False,
        },
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    ],
}
SMOLLM_PRE = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}
GPT2_PRE = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def test_tiny_bpe_round_trip(tmp_path):
    assert_llama_cpp_matches_hf(source_folder("tiny_llama"), tmp_path, "gpt-2")


def test_tiny_bpe_metadata(tmp_path):
    folder = source_folder("tiny_llama")
    vocab = vocab_gguf(folder, tmp_path / "v.gguf")
    assert vocab.tokens[:3] == ["<|endoftext|>", "<|pad|>", "<|mask|>"] and vocab.token_types[:3] == [3, 3, 3]
    assert set(vocab.token_types[3:]) == {1}
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.add_bos, vocab.add_eos) == (0, 0, 1, False, False)
    assert len(vocab.merges) == len(json.loads((folder / "tokenizer.json").read_text())["model"]["merges"])


def test_qwen2_style_pre_tokenizer_round_trip(tmp_path):
    folder = with_pre_tokenizer(source_folder("tiny_llama"), tmp_path / "tok", QWEN2_PRE)
    assert_llama_cpp_matches_hf(folder, tmp_path, "qwen2")


def test_smollm_style_pre_tokenizer_round_trip(tmp_path):
    folder = with_pre_tokenizer(source_folder("tiny_llama"), tmp_path / "tok", SMOLLM_PRE)
    assert_llama_cpp_matches_hf(folder, tmp_path, "smollm")


def test_unknown_pre_tokenizer_is_refused():
    with pytest.raises(ExportError, match="Unknown tokenizer pre-tokenizer"):
        detect_pre_tokenizer({"type": "Metaspace", "replacement": "▁"})
    with pytest.raises(ExportError, match="Unknown"):
        detect_pre_tokenizer({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True})
    with pytest.raises(ExportError, match="Unknown"):
        detect_pre_tokenizer(None)


@pytest.mark.slow
def test_smollm2_round_trip(tmp_path):
    """SmolLM2's tokenizer (repaired from the packaged GGUF's metadata: Digits + ByteLevel) maps to
    llama.cpp's 'smollm', and llama.cpp then tokenizes exactly like the HF tokenizer."""
    folder = source_folder("smollm2_135m")
    assert_llama_cpp_matches_hf(folder, tmp_path, "smollm")
    vocab = vocab_gguf(folder, tmp_path / "v.gguf")
    assert (vocab.bos_id, vocab.eos_id, vocab.add_bos) == (1, 2, False) and vocab.chat_template


@pytest.mark.slow
def test_smollm2_without_digit_splitting_round_trip(tmp_path):
    """The same vocabulary with a plain ByteLevel pre-tokenizer maps to 'gpt-2' and still round-trips."""
    folder = with_pre_tokenizer(source_folder("smollm2_135m"), tmp_path / "tok", GPT2_PRE)
    assert_llama_cpp_matches_hf(folder, tmp_path, "gpt-2")


def test_added_token_and_padded_vocab_round_trip(tmp_path):
    """A non-special added token is USER_DEFINED (matched in raw text by both); ids beyond the
    tokenizer up to the model's vocab_size are UNUSED padding, as in Qwen2.5's checkpoints."""
    folder = tmp_path / "tok"
    tok = AutoTokenizer.from_pretrained(source_folder("tiny_llama"))
    tok.add_tokens(["<stage direction>"])
    tok.save_pretrained(folder)
    config = AutoConfig.from_pretrained(source_folder("tiny_llama"))
    config.vocab_size = len(tok) + 7
    config.save_pretrained(folder)
    vocab = vocab_gguf(folder, tmp_path / "v.gguf")
    assert vocab.token_types[len(tok) - 1] == 4 and vocab.tokens[len(tok) - 1] == "<stage direction>"
    assert vocab.tokens[-1] == f"[PAD{config.vocab_size - 1}]" and set(vocab.token_types[len(tok):]) == {5}
    llm = llama_cpp.Llama(str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
    try:
        text = "Enter ROMEO<stage direction>, with 2 torches."
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text).input_ids
        assert llm.n_vocab() == config.vocab_size
    finally:
        llm.close()
