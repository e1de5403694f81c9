"""BitNet checkpoint -> a folder that stock transformers loads as `BitNetForCausalLM`, without our code.

The folder uses transformers' own `bitnet` model type and its `quant_method: "bitnet"` quantizer
(read from transformers 5.17: models/bitnet, integrations/bitnet.py, quantizers/quantizer_bitnet.py):

- online (default): `linear_class: "autobitlinear"`, `quantization_mode: "online"`. The latent
  full-precision weights are stored and AutoBitLinear re-quantizes them in every forward, exactly as
  our BitLinear does at quant_lambda = 1. Same size as the checkpoint; still trainable (QAT).
- packed (`ExportConfig.hf_packed`): `linear_class: "bitlinear"`, `quantization_mode: "offline"`.
  Each ternary weight is stored as uint8 with 4 values per byte (`pack_ternary`, transformers'
  layout: row block i of out/4 rows sits in bits 2i..2i+1, value + 1) plus `weight_scale` [1] holding
  the *reciprocal* of our scale, because transformers' BitLinear computes
  y = (x_q @ W_q) / (weight_scale * act_scale). (Its AutoBitLinear offline mode multiplies by
  weight_scale instead; the two conventions differ, and this file writes the `bitlinear` one.)
  Ternary matrices take 1/16 of their fp32 size (1/8 of bf16); inference only.

Layout mapping: parameter names stay HF's; our SubLN weights move from `<o_proj>.sub_norm.weight` to
`self_attn.attn_sub_norm.weight` and from `<down_proj>.sub_norm.weight` to `mlp.ffn_sub_norm.weight`,
where BitNet applies the same RMSNorm at the same place (on the o_proj / down_proj input). The
quantizer converts *every* nn.Linear that `modules_to_not_convert` does not name, and naming that list
drops transformers' default skips, so it is written explicitly: `lm_head` plus any projection the
checkpoint kept in full precision. BitNetConfig defaults (relu2, untied, Llama-3 token ids, theta
5e5) differ from a converted Llama, so every field the graph reads is set from the source config.

Accepted: llama-family checkpoints the stock graph expresses exactly, i.e. SubLN 'bitdistill' (BitNet
always runs both sub-norms, so 'none' and 'all' change the function), sub-norm eps equal to
rms_norm_eps (BitNet uses one eps for all norms), no biases, no QK-norm, no skip_layers (a skipped layer
has no sub-norms), o_proj and down_proj converted, heads * head_dim == hidden (attn_sub_norm is
hidden-wide), and for packed output every ternary out_features divisible by 4. Everything else raises
HFExportError before anything is written. A checkpoint saved mid-warmup (quant_lambda < 1) exports as
its fully quantized network, which is what every deployment format runs; the report records lambda.

Numbers, stock vs ours (both eps = 1e-5, clamped before the division, both round half to even):
- weights, online: transformers computes W * (1/s) and dequantizes as W_q / (1/s); ours W / s and
  W_q * s. The rounded reciprocal changes 1.9% of the dequantized values by 1 ulp (max 6e-8 relative,
  tiny_llama) and could flip a W/s within an ulp of 0.5 (none of 73,728). Packed mode stores our W_q.
- activations: the same formula in the same order, computed in fp32 (online) as ours.
- our STE at lambda 1 computes x + (Q(x) - x), which equals Q(x) only to ~1 ulp.
- packed: an exact integer matmul then one division vs our dequantize-then-matmul.
- transformers defaults to sdpa attention (ours: eager) and torch.compiles its quantizers.
Measured in fp32 (tiny_llama, 2x12 tokens): logits max abs difference 2-3e-7 of the logit range,
relative L2 ~2e-7, online and packed alike; greedy tokens identical. Rarely one of these ulps moves
an activation across a .5 boundary of the int8 grid (one code in 8x64 random tokens), which moves
the logits by up to ~2% of their range on random tiny models. In bf16 every one of these is a bf16
ulp, and transformers' packed BitLinear also computes the activation scale and x * scale in bf16
(ours and its online mode: fp32) and keeps weight_scale in bf16: on a bf16 tiny_llama (2x32 tokens)
stock differs from ours by ~2.5% relative L2 online and ~2.9% packed, while either differs from the
fp32 run by ~7% (bf16 latent weights already ternarize differently).

Writes are atomic: everything goes to a hidden temp sibling that is renamed into place when complete;
an existing destination is replaced only if it is empty or a previous export (it carries
`wrinklefree_export.json`, which stock loaders ignore).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.models.architectures import architecture_of
from wrinklefree_core.models.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_bitnet_checkpoint,
)
from wrinklefree_core.models.convert import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, bitlinear_modules
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.quant.reference import ternarize_weight
from wrinklefree_core.storage.atomic import atomic_folder

MARKER_NAME = "wrinklefree_export.json"
# Files a stock loader reads besides config and weights; copied byte for byte when present.
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
VALUES_PER_BYTE = 4
_SUB_NORM_NAMES = {
    "self_attn.o_proj.sub_norm.weight": "self_attn.attn_sub_norm.weight",
    "mlp.down_proj.sub_norm.weight": "mlp.ffn_sub_norm.weight",
}


class HFExportError(ValueError):
    """The checkpoint cannot be written as a stock-transformers BitNet folder; the message says why."""


@dataclass(frozen=True)
class HFExportReport:
    """What export_hf wrote.

    Attributes:
        path: the export folder.
        packed: ternary weights stored packed 2-bit (offline) rather than latent (online).
        file_bytes: size of every file written, by name.
        ternary_modules: number of projections stock transformers quantizes.
        source_quant_lambda: quant_lambda recorded in the checkpoint (the export always runs at 1).
    """

    path: Path
    packed: bool
    file_bytes: dict[str, int] = field(default_factory=dict)
    ternary_modules: int = 0
    source_quant_lambda: float = 1.0

    @property
    def total_bytes(self) -> int:
        """Sum of all file sizes."""
        return sum(self.file_bytes.values())


# ------------------------------------------------------------------------------------------- checks


def check_hf_exportable(config: Any, settings: BitNetSettings, packed: bool = False) -> None:
    """Raise HFExportError unless stock BitNetForCausalLM computes exactly what this checkpoint computes."""
    how = "Export it to GGUF (export.format=gguf) where supported, or keep serving it with wrinklefree."
    spec = architecture_of(config)
    if spec.qk_norm:
        raise HFExportError(
            f"{spec.hf_class} uses per-head QK-norm (q_norm/k_norm), which transformers' BitNet attention does not "
            f"have. {how}"
        )
    biased = [n for n, on in (("q/k/v", spec.qkv_bias), ("o_proj", spec.o_bias), ("MLP", spec.mlp_bias)) if on]
    if biased:
        raise HFExportError(
            f"the checkpoint's {', '.join(biased)} projections have biases; this exporter writes bias-free BitNet "
            f"models only (transformers' BitNet MLP has no bias at all). {how}"
        )
    if not spec.hf_bitnet:
        raise HFExportError(
            f"{spec.hf_class} (model_type '{spec.model_type}') is not a Llama-family model: transformers' BitNet graph "
            f"is Llama's; only bias-free Llama-family checkpoints (e.g. SmolLM2) export to it. {how}"
        )
    _check_sub_norms(settings)
    eps = config.rms_norm_eps
    if settings.subln_eps is not None and settings.subln_eps != eps:
        raise HFExportError(
            f"subln_eps={settings.subln_eps} differs from rms_norm_eps={eps}; transformers' BitNet uses "
            "rms_norm_eps for every norm. Convert with bitnet.subln_eps=null."
        )
    if not getattr(config, "rope_parameters", None):
        # BitNetConfig would fall back to its own theta (5e5) instead of the source model's.
        raise HFExportError(
            "the checkpoint's config has no rope_parameters. Re-run the convert stage with this transformers version."
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        raise HFExportError(
            f"num_attention_heads * head_dim = {config.num_attention_heads} * {head_dim} != hidden_size "
            f"{config.hidden_size}; transformers' BitNet attn_sub_norm is hidden_size wide and cannot hold it. {how}"
        )
    if packed:
        _check_packable(config, settings, head_dim)


def _check_sub_norms(settings: BitNetSettings) -> None:
    """transformers' BitNet has one RMSNorm before o_proj and one before down_proj in every layer, nowhere else."""
    if settings.subln != "bitdistill":
        raise HFExportError(
            f"the checkpoint uses subln='{settings.subln}', but transformers' BitNet always applies one RMSNorm before "
            "o_proj and one before down_proj and nowhere else (subln='bitdistill'). Convert with "
            "bitnet.subln=bitdistill (and train from there) to get a stock-transformers export; a subln='none' "
            "checkpoint exports to GGUF "
            "(export.format=gguf) as its source architecture."
        )
    if settings.skip_layers:
        raise HFExportError(
            f"skip_layers={settings.skip_layers}: a skipped layer keeps full-precision projections without sub-norms, "
            "but every transformers BitNet layer has both sub-norms. Convert without skip_layers."
        )
    missing = sorted({"o_proj", "down_proj"} - set(settings.target_modules))
    if missing:
        raise HFExportError(
            f"target_modules lacks {missing}, so those layers have no sub-norm; transformers' BitNet always has one. "
            "Convert with o_proj and down_proj in target_modules."
        )


def _check_packable(config: Any, settings: BitNetSettings, head_dim: int) -> None:
    """Packed mode holds out_features // 4 rows of 2-bit values: every ternary width must divide by 4."""
    widths = {
        "q_proj": config.num_attention_heads * head_dim,
        "k_proj": config.num_key_value_heads * head_dim,
        "v_proj": config.num_key_value_heads * head_dim,
        "o_proj": config.hidden_size,
        "gate_proj": config.intermediate_size,
        "up_proj": config.intermediate_size,
        "down_proj": config.hidden_size,
    }
    odd = {n: w for n, w in widths.items() if n in settings.target_modules and w % VALUES_PER_BYTE}
    if odd:
        raise HFExportError(
            f"packed export needs every ternary out_features divisible by {VALUES_PER_BYTE} (transformers' "
            f"BitLinear holds out_features // 4 packed rows); found {odd}. Use export.hf_packed=false."
        )


# ------------------------------------------------------------------------------------------- config


def bitnet_config_dict(config: Any, settings: BitNetSettings, packed: bool, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json of the export: a BitNetConfig built from the source config plus the quantizer config."""
    from transformers import BitNetConfig
    from transformers.utils.quantization_config import BitNetQuantConfig

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    bitnet = BitNetConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=head_dim,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        use_cache=getattr(config, "use_cache", True),
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=False,
        attention_dropout=getattr(config, "attention_dropout", 0.0),
        rope_parameters=dict(config.rope_parameters),
    )
    quant = BitNetQuantConfig(
        modules_to_not_convert=_not_converted(config.num_hidden_layers, settings),
        linear_class="bitlinear" if packed else "autobitlinear",
        quantization_mode="offline" if packed else "online",
        use_rms_norm=False,  # the sub-norms are the model's own modules, not per-linear norms
        rms_norm_eps=config.rms_norm_eps,
    )
    out = bitnet.to_dict()
    out["architectures"] = ["BitNetForCausalLM"]
    out["dtype"] = str(dtype).removeprefix("torch.")
    out["quantization_config"] = quant.to_dict()
    return out


def _not_converted(num_layers: int, settings: BitNetSettings) -> list[str]:
    """lm_head plus every projection the checkpoint left full precision, by full module name."""
    names = ["lm_head"]
    for i in range(num_layers):
        for block, projections in (("self_attn", ATTENTION_PROJECTIONS), ("mlp", MLP_PROJECTIONS)):
            names += [f"model.layers.{i}.{block}.{p}" for p in projections if p not in settings.target_modules]
    return names


# ------------------------------------------------------------------------------------------ weights


def pack_ternary(wq: torch.Tensor) -> torch.Tensor:
    """Pack ternary values [out, in] into uint8 [out / 4, in] in transformers' BitNet layout.

    Row r of block i (rows i*out/4 .. (i+1)*out/4 - 1) is stored as (value + 1) in bits 2i..2i+1 of
    packed row r, which is what `transformers.integrations.bitnet.unpack_weights` reverses.
    """
    out_features = wq.shape[0]
    if out_features % VALUES_PER_BYTE:
        raise ValueError(f"out_features {out_features} is not divisible by {VALUES_PER_BYTE}")
    codes = (wq.to(torch.int16) + 1).to(torch.uint8)
    codes = codes.reshape(VALUES_PER_BYTE, out_features // VALUES_PER_BYTE, *wq.shape[1:])
    packed = torch.zeros_like(codes[0])
    for i in range(VALUES_PER_BYTE):
        packed |= codes[i] << (2 * i)
    return packed


def _export_tensors(model: nn.Module, packed: bool) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict under BitNet names (ternary weights packed if asked); also the ternary count."""
    state = {name: t.detach() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # stored once, as HF does; BitNet re-ties on load
    ternary = bitlinear_modules(model)
    if packed:
        for name, module in ternary:
            wq, s = ternarize_weight(module.weight.detach())
            state[f"{name}.weight"] = pack_ternary(wq)
            # Stock BitLinear divides by weight_scale, so it holds 1 / s, in the model dtype (its buffer dtype).
            state[f"{name}.weight_scale"] = torch.reciprocal(s).reshape(1).to(module.weight.dtype)
    renamed: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        for ours, theirs in _SUB_NORM_NAMES.items():
            if name.endswith(ours):
                name = name[: -len(ours)] + theirs
        renamed[name] = t.contiguous()
    return renamed, len(ternary)


def _check_keys(tensors: dict[str, torch.Tensor], config_dict: dict[str, Any]) -> None:
    """Compare with the keys a stock BitNetForCausalLM has: a missing key would load as random init."""
    from transformers import BitNetConfig, BitNetForCausalLM

    fields = {k: v for k, v in config_dict.items() if k not in ("quantization_config", "architectures", "dtype")}
    with torch.device("meta"):
        reference = BitNetForCausalLM(BitNetConfig(**fields))
    expected = set(reference.state_dict().keys())
    if config_dict["tie_word_embeddings"]:
        expected.discard("lm_head.weight")
    if config_dict["quantization_config"]["linear_class"] == "bitlinear":
        skip = config_dict["quantization_config"]["modules_to_not_convert"]
        expected |= {
            k.removesuffix(".weight") + ".weight_scale"
            for k in expected
            if k.endswith("_proj.weight") and k.removesuffix(".weight") not in skip
        }
    got = set(tensors)
    if got != expected:
        raise RuntimeError(
            f"internal mapping error: tensors not in BitNetForCausalLM {sorted(got - expected)[:10]}, "
            f"missing {sorted(expected - got)[:10]}. This is a bug in the exporter."
        )


# ------------------------------------------------------------------------------------------- writing


def is_hf_export(path: str | os.PathLike) -> bool:
    """True when `path` is a folder written by export_hf."""
    return (Path(path) / MARKER_NAME).is_file()


def _is_replaceable(path: Path) -> bool:
    if not path.exists():
        return True
    return path.is_dir() and (not any(path.iterdir()) or is_hf_export(path))


def export_hf(checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: ExportConfig) -> HFExportReport:
    """Write the checkpoint at `checkpoint_dir` as a stock-transformers BitNet folder at `out_dir`.

    `cfg.hf_packed` picks packed 2-bit offline weights over latent online ones (see the module
    docstring). Tokenizer files and generation_config.json are copied. Raises CheckpointError for a
    missing or broken checkpoint and HFExportError for one stock transformers cannot express or an
    `out_dir` that holds something other than a previous export, in both cases before writing.
    """
    source, out, packed = Path(checkpoint_dir), Path(out_dir), cfg.hf_packed
    model, settings = load_bitnet_checkpoint(source)
    check_hf_exportable(model.config, settings, packed)
    if not _is_replaceable(out):
        raise HFExportError(
            f"Refusing to write the export to {out}: it exists and is not an empty folder or a previous export. "
            "Choose another output path or remove it."
        )
    dtype = next(t.dtype for t in model.state_dict().values() if t.is_floating_point())
    config_dict = bitnet_config_dict(model.config, settings, packed, dtype)
    tensors, n_ternary = _export_tensors(model, packed)
    _check_keys(tensors, config_dict)
    del model

    with atomic_folder(out) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name in COPIED_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        marker = {"source_checkpoint": str(source.resolve()), "packed": packed, "settings": settings.model_dump()}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    return HFExportReport(out, packed, sizes, n_ternary, settings.quant_lambda)
