"""Build a small GPT-2-style byte-level BPE tokenizer from a package corpus.

Tiny test models need a real tokenizer (the exporter writes its vocab and merges so llama.cpp can
tokenize text itself), but nothing can be downloaded. Byte-level BPE with GPT-2's pre-tokenizer is the
one family llama.cpp reproduces exactly (GGUF tokenizer model "gpt2", pre-tokenizer "gpt-2").
Training is deterministic for a given corpus and vocab size and takes a few seconds on ~1 MB.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from wrinklefree_core.data.corpora import corpus_text

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
SPECIAL_TOKENS = [EOS, PAD, MASK]
TRAIN_BYTES = 1_500_000


def train_bpe_tokenizer(corpus: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens on a package corpus; ids 0..2 are the specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus_text(corpus, max_bytes=TRAIN_BYTES)
    lines = text.split("\n")
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        model_max_length=1 << 20,
    )
