"""Repair what transformers' GGUF tokenizer reader gets wrong, from the GGUF's own metadata.

Measured with transformers 5.17 on SmolLM2-135M-Instruct's GGUF: the reader
- drops the pre-tokenizer named by `tokenizer.ggml.pre` ("smollm" = split digits one by one, then
  GPT-2 byte-level), so runs of spaces before digits tokenize differently from the original;
- reports eos = bos = `<|im_start|>` (id 1) although the file says eos 2 and pad 2;
- installs a SentencePiece-style decoder (ByteFallback, Fuse, Replace "▁") in front of ByteLevel.
The original tokenizer is a plain byte-level BPE, so those pieces are rebuilt here from the metadata.
Unknown pre-tokenizer names are refused rather than guessed: a silent mismatch would only surface as
worse text, far away from its cause.
"""

from __future__ import annotations

from pathlib import Path

import gguf
from tokenizers import decoders, pre_tokenizers

# llama.cpp pre-tokenizer name -> the HF pre-tokenizer that tokenizes identically.
_PRE_TOKENIZERS = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    ),
}


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return value.tolist()[0]


def repair_tokenizer(tokenizer, gguf_path: Path):
    """Fix pre-tokenizer, decoder and special ids of a tokenizer read from `gguf_path`; returns it."""
    reader = gguf.GGUFReader(str(gguf_path))
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        return tokenizer  # only byte-level BPE files are repaired; others are used as transformers reads them
    pre = _field(reader, "tokenizer.ggml.pre") or "gpt-2"
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"{gguf_path.name}: unknown pre-tokenizer '{pre}' (known: {', '.join(_PRE_TOKENIZERS)})")
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    # transformers' cleanup strips spaces before punctuation: destructive for a byte-level BPE
    tokenizer.clean_up_tokenization_spaces = False
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        token_id = _field(reader, f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    return tokenizer
