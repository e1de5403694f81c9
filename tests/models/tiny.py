"""Tiny random HF causal LMs for conversion and checkpoint tests.

Design choices:
- Built from configs with fixed seeds (nothing from the Hub), float32 and eager attention so that
  every forward is deterministic and comparable bit for bit.
- Shapes are small but keep what matters: GQA (4 query heads, 2 KV heads), two decoder layers, and
  for Qwen3 a head_dim that does not equal hidden/heads, as in the real Qwen3 models.
- Parameters HF initialises to constants (biases to zero, norm weights to one) are re-drawn, so the
  tests actually exercise bias handling, QK-norm and the norm weights.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)

ARCHS = ("llama-tied", "llama-untied", "qwen2", "qwen3")


def _randomize_constants(model: torch.nn.Module, seed: int) -> None:
    """Replace zero biases and unit norm weights by random values so that they matter."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))


def build(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """Build a random-init float32 eager-attention causal LM from `config`, in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    _randomize_constants(model, seed)
    return model.eval()


def llama_config(tied: bool = True) -> LlamaConfig:
    """SmolLM2-shaped Llama config (tied embeddings by default, like SmolLM2)."""
    return LlamaConfig(**COMMON, tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def qwen2_config() -> Qwen2Config:
    """Qwen2 config: q/k/v biases, tied embeddings (as Qwen2.5-0.5B)."""
    return Qwen2Config(**COMMON, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen3_config() -> Qwen3Config:
    """Qwen3 config: QK-norm, explicit head_dim 32 (4 heads * 32 != hidden 64), untied embeddings."""
    return Qwen3Config(
        **COMMON,
        head_dim=32,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def tiny_llama(tied: bool = True, seed: int = 0) -> torch.nn.Module:
    """Random tiny Llama (GQA), tied or untied lm_head."""
    return build(llama_config(tied), seed)


def tiny_qwen2(seed: int = 0) -> torch.nn.Module:
    """Random tiny Qwen2 with non-zero q/k/v biases."""
    return build(qwen2_config(), seed)


def tiny_qwen3(seed: int = 0) -> torch.nn.Module:
    """Random tiny Qwen3 with non-trivial q_norm/k_norm weights."""
    return build(qwen3_config(), seed)


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """Build one of ARCHS by name."""
    builders = {
        "llama-tied": lambda: tiny_llama(True, seed),
        "llama-untied": lambda: tiny_llama(False, seed),
        "qwen2": lambda: tiny_qwen2(seed),
        "qwen3": lambda: tiny_qwen3(seed),
    }
    return builders[arch]()


def token_ids(batch: int = 2, seq: int = 12, vocab: int = COMMON["vocab_size"], seed: int = 1) -> torch.Tensor:
    """Deterministic random token ids of shape (batch, seq)."""
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
