"""What a training run starts from: the student, its teacher, and which parameters train.

Student (`model=` / `checkpoint=`):
- a BitNet checkpoint folder (from convert or an earlier training stage), given as `checkpoint=DIR`
  or `model=DIR`: loaded as is; its stage.json's `inputs.source_model` is carried forward;
- anything else (`model=tiny_llama`, `model=smollm2_135m`, `model=/path/to/hf-folder`): materialized
  and converted in memory with `cfg.bitnet` (SubLN calibration included), exactly as the convert stage would.

Teacher: `teacher=` (an HF folder, a BitNet checkpoint, or a model config name such as
`smollm2_135m`), else the full-precision source model the chain started from (the input
checkpoint's stage.json `source_model`, or the materialized source when converting in memory).
It is loaded only when an enabled objective needs it.

Trainable parameters:
- a recipe with the `lrc` objective (lrc_calibration): LRC adapters are added when the student has
  none (rank and init from `training.lrc`, V drawn from a generator seeded with the run seed), and
  only U, V train. Lambda stays at the recipe's value (1 = fully ternary), as the adapters correct
  the deployed ternary model.
- every other recipe: all parameters train, embeddings, norms, SubLN and any LRC adapters included.
  The full-precision parts (embeddings/lm_head, norms) are what lets the network re-balance around
  the ternary projections; freezing them slows recovery, and they are a small share of the weights.
- `training.frozen` then freezes the parameters whose names match its patterns (fnmatch), in any
  recipe. A pattern that matches nothing is an error: a typo must not silently train everything.
  A tied lm_head is the embedding tensor, named `model.embed_tokens.weight` once.

Design choices:
- The student trains in fp32 master weights whatever `model.dtype` is (bf16-mixed autocasts the
  matmuls on GPU); its checkpoints are fp32, so a resumed run is bit-exact.
- A frozen teacher is stored in bf16 when training runs in bf16-mixed (it needs no master weights).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from wrinklefree_core.config.compose import ConfigError, config_root
from wrinklefree_core.config.model import ModelConfig
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.config.training import TrainingConfig
from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint, load_bitnet_checkpoint
from wrinklefree_core.models.lrc import add_lrc_adapters, freeze_all_but_lrc, lrc_modules, lrc_settings_of
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.models.sources import load_hf_model, materialize
from wrinklefree_core.models.conversion import convert_for_run
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, read_manifest
from wrinklefree_core.training.errors import TeacherError


@dataclass
class Student:
    """The model being trained, with what is needed to save it and to name its inputs."""

    model: nn.Module
    tokenizer: Any
    settings: BitNetSettings
    inputs: dict[str, str] = field(default_factory=dict)


def input_checkpoint(cfg: RunConfig) -> Path | None:
    """The BitNet checkpoint a run starts from (`checkpoint=` or a `model=` folder that is one), if any."""
    if cfg.checkpoint:
        folder = Path(cfg.checkpoint).expanduser()
        if not is_bitnet_checkpoint(folder):
            raise FileNotFoundError(f"checkpoint={cfg.checkpoint} is not a BitNet checkpoint folder (no config.json with 'bitnet' settings)")
        return folder.resolve()
    if cfg.model.source == "hf" and cfg.model.path and is_bitnet_checkpoint(Path(cfg.model.path).expanduser()):
        return Path(cfg.model.path).expanduser().resolve()
    return None


def load_checkpoint_student(folder: Path) -> Student:
    """A student loaded from a BitNet checkpoint folder, in fp32 for training."""
    from transformers import AutoTokenizer

    model, settings = load_bitnet_checkpoint(folder, dtype=torch.float32)
    inputs = {"checkpoint": str(folder)}
    if (folder / MANIFEST_NAME).is_file():
        source = read_manifest(folder).inputs.get("source_model")
        if source:
            inputs["source_model"] = source
    return Student(model.train(), AutoTokenizer.from_pretrained(folder), settings, inputs)


def load_student(cfg: RunConfig) -> Student:
    """The student `cfg` asks for: a loaded checkpoint, or the source model converted in memory."""
    folder = input_checkpoint(cfg)
    if folder is not None:
        return load_checkpoint_student(folder)
    source = materialize(cfg.model)
    model, tokenizer = load_hf_model(source, dtype=torch.float32)
    convert_for_run(model, tokenizer, cfg)
    return Student(model.train(), tokenizer, cfg.bitnet, {"source_model": str(source)})


def teacher_path(cfg: RunConfig, inputs: dict[str, str]) -> Path:
    """The teacher folder: `teacher=` (folder or model config name), else the chain's source model."""
    if cfg.teacher:
        folder = Path(cfg.teacher).expanduser()
        if folder.is_dir():
            return folder.resolve()
        option = config_root() / "model" / f"{cfg.teacher}.yaml"
        if option.is_file():
            return materialize(ModelConfig.model_validate(yaml.safe_load(option.read_text())))
        raise TeacherError(f"teacher={cfg.teacher} is neither a folder nor a model config name (configs/model/*.yaml)")
    source = inputs.get("source_model")
    if not source:
        raise TeacherError(
            f"training={cfg.training.name} needs a full-precision teacher, and the input checkpoint's stage.json names "
            "no source_model; pass teacher=/path/to/hf-model-folder (or a model config name)"
        )
    if not Path(source).is_dir():
        raise TeacherError(f"the teacher {source} (source_model in the input's stage.json) does not exist here; pass teacher=DIR")
    return Path(source)


def load_teacher(path: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A frozen teacher in eval mode: a plain HF model, or a BitNet checkpoint."""
    if is_bitnet_checkpoint(path):
        model, _ = load_bitnet_checkpoint(path, dtype=dtype)
    else:
        model, _ = load_hf_model(path, dtype=dtype)
    return model.eval().requires_grad_(False)


def prepare_trainable(student: Student, training: TrainingConfig, seed: int, teacher: nn.Module | None = None) -> Student:
    """Apply the recipe's trainable-parameter policy (module docstring); returns the updated student.

    New LRC adapters with init "svd" factor the residual to `teacher`'s weights when it is given.
    """
    if training.objectives.lrc.enabled:
        if not lrc_modules(student.model):
            generator = torch.Generator().manual_seed(seed)
            add_lrc_adapters(student.model, training.lrc.rank_fraction, training.lrc.init, generator=generator, reference=teacher)
            student.settings = student.settings.model_copy(update={"lrc": lrc_settings_of(student.model)})
        freeze_all_but_lrc(student.model)
    else:
        student.model.requires_grad_(True)
    freeze_matching(student.model, training.frozen)
    return student


def freeze_matching(model: nn.Module, patterns: list[str]) -> None:
    """Set requires_grad=False on every parameter whose name matches one of `patterns` (fnmatch)."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            sample = ", ".join(names[:4])
            raise ConfigError(f"training.frozen pattern {pattern!r} matches no parameter of the model (names look like: {sample}, ...)")
        for name in matched:
            model.get_parameter(name).requires_grad_(False)


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied tensors counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def count_parameters(model: nn.Module) -> int:
    """All parameters, tied tensors counted once."""
    return trainable_count(model)[1]


def _teacher(cfg: RunConfig, inputs: dict[str, str], resume: dict[str, Any] | None) -> tuple[str, Path]:
    """(the teacher as stage.json names it, its local folder); a gs:// teacher is downloaded.

    The teacher is `teacher=`, else the chain's source model; a resumed run reuses the one its
    run.json records.
    """
    from wrinklefree_core.artifacts.io import local_path
    from wrinklefree_core.uri import is_remote

    if resume is not None:
        named = inputs["teacher"]
    elif cfg.teacher:
        named = cfg.teacher
    else:
        named = inputs.get("source_model") or ""
    if not is_remote(named):
        path = Path(named) if resume is not None else teacher_path(cfg, inputs)
        return str(path), path
    return named, Path(local_path(named, cfg.gcs))


def _use_sdpa(model: nn.Module) -> None:
    # Eager attention (the loaders' default) keeps CPU numbers reproducible; on GPU, SDPA is much faster.
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter("sdpa")


def build_models(cfg: RunConfig, resume_from: Path | None, resume: dict[str, Any] | None, settings: dict[str, Any]):
    """(student with its trainable parameters set, ObjectiveManager, frozen teacher or None).

    `resume_from` is the checkpoint's model folder of a resumed run. `student.inputs` name gs://
    inputs by their URIs, local ones by their paths.
    """
    from wrinklefree_core.artifacts.io import as_uris, local_inputs
    from wrinklefree_core.objectives import ObjectiveManager

    local_cfg, origins = local_inputs(cfg)
    if resume is not None and resume_from is not None:
        student = load_checkpoint_student(resume_from)
        student.inputs = dict(resume["inputs"])
    else:
        student = load_student(local_cfg)
        student.inputs = as_uris(student.inputs, origins)
    try:
        objectives = ObjectiveManager.from_config(cfg.training, mask_token_id=student.tokenizer.mask_token_id)
    except ValueError as exc:  # e.g. DLM without a mask token: a config the user has to change
        raise ConfigError(f"training={cfg.training.name}: {exc}") from None
    teacher = None
    if objectives.needs_teacher:
        student.inputs["teacher"], path = _teacher(cfg, student.inputs, resume)
        teacher = load_teacher(path, torch.bfloat16 if settings["precision"] == "bf16-mixed" else torch.float32)
    student = prepare_trainable(student, cfg.training, cfg.seed, teacher)
    if settings["accelerator"] == "gpu":
        for model in (student.model, teacher):
            if model is not None:
                _use_sdpa(model)
    return student, objectives, teacher
