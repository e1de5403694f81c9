"""Save and load a converted BitNet model as an HF-style folder.

A checkpoint folder holds:
- config.json: the HF config plus a "bitnet" key with the BitNetSettings (quant_lambda is the value
  the model had when saved, so a run resumed mid-warmup continues from it);
- model.safetensors: the state dict with parameter names unchanged from HF (BitLinear keeps
  `weight`/`bias`; SubLN adds `<proj>.sub_norm.weight`); tied weights are stored once;
- tokenizer and generation_config files when available, plus any extra files a stage adds.

Design choices:
- Writes are atomic at folder level (storage/atomic.py): everything goes to a hidden sibling
  `.{name}.tmp-<pid>` and is renamed into place only when complete. A previous checkpoint at the
  destination is moved aside and deleted only after the new one is in place, so a failed or killed
  save never leaves a half-written checkpoint under the real name. (Between the two renames the
  destination is briefly absent; a crash exactly there leaves the old copy at `.{name}.old-<pid>`,
  which the next save to that destination renames back first.)
- Loading rebuilds the module tree from config + settings (from_config without weight init, then
  convert_to_bitnet) and assigns the stored tensors, keeping their dtypes, so a reload is bit-exact.
  Key checking is strict: a missing or unexpected tensor is an error, never a silent random init.
- Every failure a user can cause (wrong path, a plain HF folder, a truncated file) raises
  CheckpointError with what is missing and what to run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from wrinklefree_core.models.architectures import architecture_of
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.convert import convert_to_bitnet, expected_bitlinear_layout
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.storage.atomic import atomic_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SETTINGS_KEY = "bitnet"
_RESERVED = {CONFIG_NAME, WEIGHTS_NAME}
_MAX_KEYS_SHOWN = 10


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not match its config."""


# ---------------------------------------------------------------------------------------------- save


def _current_quant_lambda(model: nn.Module, default: float) -> float:
    """The quant_lambda the model runs with now (all BitLinears share it; set_quant_lambda writes all)."""
    for module in model.modules():
        if isinstance(module, BitLinear):
            # The buffer is fp32: record its shortest decimal (0.37, not 0.3700000047683716), which
            # parses back to the same fp32 value.
            value = module.quant_lambda.item()
            return float(str(np.float32(value))) if module.quant_lambda.dtype == torch.float32 else value
    return default


def _check_settings_match(model: nn.Module, settings: BitNetSettings) -> None:
    """Refuse to record settings that would rebuild a different module tree than the model has."""
    expected = expected_bitlinear_layout(len(model.model.layers), settings)
    actual = {name: m.sub_norm is not None for name, m in model.named_modules() if isinstance(m, BitLinear)}
    if expected != actual:
        diff = sorted(set(expected.items()) ^ set(actual.items()))[:_MAX_KEYS_SHOWN]
        raise ValueError(
            "The settings passed to save_bitnet_checkpoint do not describe this model's BitLinear/SubLN layout "
            f"(differences as (module, has_sub_norm): {diff}). Pass the settings the model was converted with."
        )


def _unique_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop aliases of the same tensor (tied embeddings) and make every kept tensor contiguous and unshared.

    The first name in state-dict order wins, which keeps `model.embed_tokens.weight` and drops the
    tied `lm_head.weight`, as HF does.
    """
    seen: set[tuple] = set()
    storages: set[tuple] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach()
        ptr = (t.device, t.untyped_storage().data_ptr())
        ident = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if ident in seen:
            continue
        seen.add(ident)
        # safetensors refuses distinct tensors that share memory, so partial views get their own copy.
        out[name] = t.clone().contiguous() if ptr in storages else t.contiguous()
        storages.add(ptr)
    return out


def _is_replaceable(path: Path) -> bool:
    """Only an empty folder or a previous checkpoint may be replaced; anything else is someone's data."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or is_bitnet_checkpoint(path)


def _write_extra_files(folder: Path, extra_files: dict[str, bytes | str]) -> None:
    for rel, content in extra_files.items():
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or rel in _RESERVED:
            raise ValueError(
                f"extra file name {rel!r} must be a relative path inside the checkpoint, not {sorted(_RESERVED)}."
            )
        target = folder / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)


def save_bitnet_checkpoint(
    model: nn.Module,
    out_dir: str | os.PathLike,
    settings: BitNetSettings,
    tokenizer: Any | None = None,
    extra_files: dict[str, bytes | str] | None = None,
) -> Path:
    """Write `model` (converted with `settings`) as a checkpoint folder at `out_dir`, atomically.

    config.json gets the HF config plus "bitnet": settings with the model's current quant_lambda.
    Tied weights are stored once. `tokenizer.save_pretrained` and the model's generation_config are
    written when present; `extra_files` maps relative names to text or bytes. An existing `out_dir`
    is replaced only if it is empty or a previous checkpoint, and only once the new one is complete.
    Returns the checkpoint path.
    """
    out = Path(out_dir)
    spec = architecture_of(model)
    _check_settings_match(model, settings)
    if not _is_replaceable(out):
        raise CheckpointError(
            f"Refusing to write a checkpoint to {out}: it exists and is not an empty folder or a previous checkpoint. "
            "Choose another output path or remove it."
        )
    recorded = settings.model_copy(update={"quant_lambda": _current_quant_lambda(model, settings.quant_lambda)})
    config = model.config.to_dict()
    config["architectures"] = [spec.hf_class]
    config["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    config[SETTINGS_KEY] = recorded.model_dump()

    with atomic_folder(out) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(_unique_tensors(model.state_dict()), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        _write_extra_files(tmp, extra_files or {})
    return out


# ---------------------------------------------------------------------------------------------- load


def is_bitnet_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a folder whose config.json carries BitNet settings."""
    try:
        config = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and SETTINGS_KEY in config


def _read_config(folder: Path) -> tuple[Any, BitNetSettings]:
    how_to_fix = "Run `wrinklefree convert ...` first to create a checkpoint, or point to the folder it wrote."
    if not folder.is_dir():
        raise CheckpointError(f"No checkpoint at {folder}: the folder does not exist. {how_to_fix}")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: {CONFIG_NAME} is missing. {how_to_fix}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e}). Re-run the stage that wrote it.") from e
    if not isinstance(raw, dict) or SETTINGS_KEY not in raw:
        raise CheckpointError(
            f"{folder} is a plain Hugging Face model, not a BitNet checkpoint ({CONFIG_NAME} has no "
            f"'{SETTINGS_KEY}' settings). Convert it first with `wrinklefree convert ...`."
        )
    try:
        settings = BitNetSettings.model_validate(raw.pop(SETTINGS_KEY))
    except ValidationError as e:
        raise CheckpointError(
            f"Invalid '{SETTINGS_KEY}' settings in {config_path}: {e}. Re-run the stage that wrote it."
        ) from e
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise CheckpointError(f"{config_path} has no model_type. Re-run the stage that wrote it.")
    # Check the architecture on the raw fields first: AutoConfig's own error for an unknown model_type
    # would not say what is supported.
    architecture_of(SimpleNamespace(**raw, model_type=model_type))
    return AutoConfig.for_model(model_type, **raw), settings


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(
            f"{folder} has a {CONFIG_NAME} but no {WEIGHTS_NAME}: the checkpoint is incomplete. "
            "Re-run the stage that wrote it."
        )
    try:
        return load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error type for truncated or garbled files
        raise CheckpointError(f"{weights_path} is corrupt or truncated ({e}). Re-run the stage that wrote it.") from e


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that refer to one Parameter object (e.g. lm_head.weight and model.embed_tokens.weight)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _show(keys: set[str]) -> str:
    shown = sorted(keys)[:_MAX_KEYS_SHOWN]
    more = f" and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{shown}{more}"


def load_bitnet_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = "eager",
) -> tuple[nn.Module, BitNetSettings]:
    """Load a checkpoint written by save_bitnet_checkpoint; return (model in eval mode, settings).

    The model is rebuilt from config.json and its "bitnet" settings, the stored tensors are assigned
    with strict key checking, tied embeddings are re-tied and quant_lambda restored. `dtype` None
    keeps the stored dtypes (bit-exact reload). `attn_implementation` defaults to "eager", as the
    project's HF loader does, so reloaded logits equal those of a model converted in memory bit for
    bit; pass "sdpa" for speed, or None for transformers' default.
    Raises CheckpointError for a missing, incomplete or mismatched checkpoint.
    """
    folder = Path(path)
    config, settings = _read_config(folder)
    state_dict = _read_weights(folder)
    float_dtypes = [t.dtype for t in state_dict.values() if t.is_floating_point()]
    build_dtype = dtype or (float_dtypes[0] if float_dtypes else torch.float32)

    kwargs: dict[str, Any] = {"dtype": build_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    # Every parameter is overwritten below, so random init (seconds for a real model) is skipped.
    with _no_init_weights():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.tie_weights()  # skipped along with the init above
    convert_to_bitnet(model, settings)

    groups = _tied_groups(model)
    _complete_and_check_keys(model, state_dict, groups, folder, settings)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        # assign=True keeps each stored tensor (and its dtype) instead of copying into the empty init.
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME} has tensors of the wrong shape ({e}). Re-run the stage that wrote it."
        ) from e
    _retie(model, groups)

    generation_path = folder / "generation_config.json"
    if generation_path.is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.to(device).eval(), settings


def _complete_and_check_keys(model: nn.Module, state_dict: dict, groups: list[list[str]], folder: Path, settings) -> None:
    """Give every name of a tied group its stored tensor (a pair is stored once, under either name), then check the keys."""
    for group in groups:
        present = [name for name in group if name in state_dict]
        if any(not torch.equal(state_dict[name], state_dict[present[0]]) for name in present[1:]):
            raise CheckpointError(
                f"{folder / WEIGHTS_NAME} stores different values for the tied tensors {present}, but "
                f"{CONFIG_NAME} says they are tied (tie_word_embeddings). Re-run the stage that wrote it."
            )
        if present:
            for name in group:
                state_dict.setdefault(name, state_dict[present[0]])
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME} does not match its {CONFIG_NAME} (settings {settings.model_dump()}): "
            f"missing tensors {_show(missing)}, unexpected tensors {_show(unexpected)}. "
            "Re-run the stage that wrote it."
        )


def _retie(model: nn.Module, groups: list[list[str]]) -> None:
    """Point every alias back at its group's first Parameter (assign=True gave each its own object)."""
    for group in groups:
        source = model.get_parameter(group[0])
        for name in group[1:]:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, source)


def _no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' no-init context, or a no-op where this transformers version lacks it."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()
