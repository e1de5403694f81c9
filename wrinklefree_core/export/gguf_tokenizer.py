"""The checkpoint's tokenizer as GGUF metadata, so that llama.cpp tokenizes text exactly as HF does.

Design choices:
- Only byte-level BPE is exported (GGUF tokenizer model "gpt2"): the family llama.cpp reproduces
  exactly and the one every supported model uses. Tokens are written in id order (ids the tokenizer
  lacks below the model's vocab size become "[PAD<id>]" UNUSED entries), with types CONTROL for
  special added tokens, USER_DEFINED for other added tokens, NORMAL otherwise, plus all merges.
- The pre-tokenizer name is read off the structure of tokenizer.json's `pre_tokenizer`, never guessed:
  plain ByteLevel(use_regex) is GPT-2's regex ("gpt-2"; llama.cpp's "default" splits digits and
  punctuation runs differently), Digits(individual) + ByteLevel is "smollm", Qwen2's Split regex +
  ByteLevel is "qwen2". Anything else is refused with the structure found: a wrong name would load fine
  and silently tokenize differently.
- bos/eos/pad ids follow what HF generation uses (generation_config, then config.json), falling back
  to the tokenizer's; add_bos/add_eos are measured by tokenizing with and without special tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType

from wrinklefree_core.export.gguf_layout import ExportError

_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_ALLOWED_NORMALIZERS = {None, "NFC"}


@dataclass
class GGUFVocab:
    """Everything llama.cpp's BPE tokenizer reads from a GGUF."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None = None
    notes: list[str] = field(default_factory=list)


def _byte_level(p: dict, use_regex: bool) -> bool:
    return p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False) and p.get("use_regex", True) == use_regex


def detect_pre_tokenizer(pre_tokenizer: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for an HF tokenizer.json `pre_tokenizer`; ExportError if unknown."""
    p = pre_tokenizer or {}
    if _byte_level(p, use_regex=True):
        return "gpt-2"
    if p.get("type") == "Sequence":
        parts = p.get("pretokenizers") or []
        if len(parts) == 2:
            first, second = parts
            if first.get("type") == "Digits" and first.get("individual_digits") and _byte_level(second, True):
                return "smollm"
            if (
                first.get("type") == "Split"
                and (first.get("pattern") or {}).get("Regex") == _QWEN2_REGEX
                and first.get("behavior") == "Isolated"
                and not first.get("invert", False)
                and _byte_level(second, use_regex=False)
            ):
                return "qwen2"
    raise ExportError(
        f"Unknown tokenizer pre-tokenizer {json.dumps(p)[:400]}: llama.cpp needs its name and a wrong name "
        "tokenizes differently without any error. Known: ByteLevel (gpt-2), Digits+ByteLevel (smollm), "
        "Qwen2 Split+ByteLevel (qwen2). Add the mapping in wrinklefree_core/export/gguf_tokenizer.py after "
        "checking llama.cpp's src/llama-vocab.cpp."
    )


def _check_model(tj: dict) -> None:
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"Tokenizer model '{model.get('type')}' is not exported; only byte-level BPE (GGUF 'gpt2') is.")
    decoders = [tj.get("decoder") or {}]
    decoders += decoders[0].get("decoders") or []
    if not any(d.get("type") == "ByteLevel" for d in decoders):
        raise ExportError(
            "The tokenizer is BPE but not byte-level (no ByteLevel decoder); llama.cpp's 'gpt2' model needs byte-level BPE."
        )
    if model.get("ignore_merges"):
        raise ExportError("The tokenizer sets ignore_merges, which none of the known pre-tokenizers here use.")
    norm = tj.get("normalizer") or {}
    parts = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    kinds = [n.get("type") for n in parts]
    bad = [k for k in kinds if k not in _ALLOWED_NORMALIZERS]
    if bad:
        raise ExportError(f"Tokenizer normalizer {bad} has no llama.cpp equivalent for BPE models.")


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _special_ids(folder: Path, config: Any, tokenizer: Any) -> dict[str, int | None]:
    gen: dict = {}
    gen_path = folder / "generation_config.json"
    if gen_path.is_file():
        gen = json.loads(gen_path.read_text(encoding="utf-8"))
    ids = {}
    for key in ("bos", "eos", "pad"):
        value = gen.get(f"{key}_token_id", getattr(config, f"{key}_token_id", None))
        if value is None:
            value = getattr(tokenizer, f"{key}_token_id", None)
        ids[key] = _first_id(value)
    ids["unk"] = _first_id(getattr(tokenizer, "unk_token_id", None))
    return ids


def _added_around(tokenizer: Any) -> tuple[bool, bool]:
    """(add_bos, add_eos): what the post-processor adds around a plain text."""
    plain = tokenizer("a b", add_special_tokens=False).input_ids
    full = tokenizer("a b").input_ids
    if full == plain:
        return False, False
    for head in range(len(full) - len(plain) + 1):
        if full[head : head + len(plain)] == plain:
            before, after = full[:head], full[head + len(plain) :]
            if len(before) <= 1 and len(after) <= 1:
                return bool(before), bool(after)
    raise ExportError(
        f"The tokenizer's post-processor adds {full} around {plain}; llama.cpp can only add one BOS and/or one EOS."
    )


def read_vocab(folder: str | Path, config: Any, n_vocab: int) -> GGUFVocab:
    """Read the tokenizer saved in a checkpoint folder into GGUF vocab metadata, or raise ExportError."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        raise ExportError(
            f"{folder} has no tokenizer.json: the GGUF needs the model's vocabulary and merges so llama.cpp can "
            "tokenize text. Save the tokenizer into the checkpoint (the convert stage does)."
        )
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    _check_model(tj)
    pre = detect_pre_tokenizer(tj.get("pre_tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ExportError(f"The tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {n_vocab}.")
    added = {tok.content: tok for tok in tokenizer.added_tokens_decoder.values()}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif text in added:
            tokens.append(text)
            types.append(TokenType.CONTROL if added[text].special else TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    ids = _special_ids(folder, config, tokenizer)
    add_bos, add_eos = _added_around(tokenizer)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    notes = []
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None and ids["eos"] is not None and tok_eos != ids["eos"]:
        notes.append(f"eos id {ids['eos']} from the model's generation config (the tokenizer says {tok_eos})")
    return GGUFVocab(
        pre=pre,
        tokens=tokens,
        token_types=[int(t) for t in types],
        merges=merges,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        pad_id=ids["pad"],
        unk_id=ids["unk"],
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template or None,
        notes=notes,
    )


def write_vocab(writer: GGUFWriter, vocab: GGUFVocab) -> None:
    """Add the tokenizer keys to a GGUFWriter (before its header is written)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for value, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
        (vocab.unk_id, writer.add_unk_token_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
