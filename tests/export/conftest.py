"""Shared builders for the export tests: tiny BitNet checkpoints with a real trained BPE tokenizer.

Design choices:
- Models come from the project's own `random` sources (tiny_llama: width 64 -> fallback types;
  tiny_llama_256: every ternary input width a multiple of 256 -> TQ types; tiny_qwen2/qwen3), converted
  and saved with the real checkpoint code, so the exporter reads exactly what the pipeline writes.
- Parameters HF initialises to constants (norms to one, biases to zero, SubLN to one) are re-drawn,
  so a swapped norm or a dropped bias changes the logits.
- Random-init logits are nearly uniform, which would make top-1 comparisons meaningless, so the
  embedding (and an untied lm_head) is scaled up (EMBED_SCALE): logits get a spread of tens of units
  while every layer still contributes. Nothing is trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wrinklefree_core.config import compose
from wrinklefree_core.models.checkpoint import save_bitnet_checkpoint
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.models.sources import load_hf_model, materialize

EMBED_SCALE = 25.0

# Shakespeare with digits, punctuation runs and odd spacing: what tokenizers disagree on first.
SAMPLE_TEXT = (
    "ROMEO. But soft, what light through yonder window breaks?\n"
    "It is the east, and Juliet is the sun!  Act 2, Scene 2 -- lines 1-25 (1597).\n"
    "  Tush, tush!... 'Tis 3:45; 1000 ducats, or 12.5%?\tO, I am fortune's fool!"
)


def source_folder(model: str, overrides: tuple[str, ...] = ()) -> Path:
    """The cached HF folder of a configs/model entry (built once, seconds for the tiny ones)."""
    return materialize(compose("convert", [f"model={model}", *overrides]).model)


def build_checkpoint(
    out: Path,
    model: str,
    subln: str = "bitdistill",
    overrides: tuple[str, ...] = (),
    seed: int = 0,
    **settings_kwargs,
) -> Path:
    """Convert a tiny source model with the given SubLN, re-draw its constant parameters, save it at `out`."""
    hf, tokenizer = load_hf_model(source_folder(model, overrides))
    settings = BitNetSettings(subln=subln, **settings_kwargs)
    convert_to_bitnet(hf, settings)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        hf.get_input_embeddings().weight.mul_(EMBED_SCALE)
        if not hf.config.tie_word_embeddings:
            hf.get_output_embeddings().weight.mul_(EMBED_SCALE)
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    return save_bitnet_checkpoint(hf.eval(), out, settings, tokenizer)


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """build_checkpoint with a per-session cache keyed by its arguments."""
    cache: dict[tuple, Path] = {}

    def make(model: str, subln: str = "bitdistill", overrides: tuple[str, ...] = (), **kw) -> Path:
        key = (model, subln, overrides, repr(sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("ckpt") / f"{model}-{subln}"
            cache[key] = build_checkpoint(out, model, subln, overrides, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory) -> Path:
    """The real SmolLM2-135M converted by the convert stage (default settings) into a temp folder."""
    from wrinklefree_core.stages.convert import run_convert

    out = tmp_path_factory.mktemp("smollm2") / "smollm2_135m-bitnet"
    return run_convert(compose("convert", ["model=smollm2_135m", f"out={out}"])).out
